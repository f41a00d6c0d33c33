"""`ingrain-build --engines s3://...`: build into a scratch repository, then publish the engine
directory to the object store as a new version (runtime.repository.s3)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from builder.errors import BuildError
from builder.progress import Progress
from runtime.repository.s3 import BrokenVersion, ObjectStore, S3Location, StoreError


def build_and_publish(
    source: str,
    location: S3Location,
    name: str | None = None,
    force: bool = False,
    skip_existing: bool = False,
    progress: Progress | None = None,
    **build_arguments,
) -> str | None:
    """Like builder.build_model, into `location`; the version published, or None when the
    model is there and `skip_existing` is set."""
    from builder import build_model

    progress = progress or Progress()
    name = name or source
    store = ObjectStore(location)
    try:
        # Before the build, so a wrong bucket or credentials fail in seconds, not after it.
        try:
            existing = store.find(name)
        except BrokenVersion as error:  # not a model: the publish replaces it
            progress.say(f"replacing an unreadable pointer: {error}")
            existing = None
        if existing is not None and skip_existing:
            progress.say(f"{name} is already published in {location}; nothing to do")
            return None
        if existing is not None and not force:
            raise BuildError(f"{name!r} is already in {location}; pass --force to republish it")
        with tempfile.TemporaryDirectory(prefix="ingrain-build-") as scratch:
            target = build_model(
                source, Path(scratch), name=name, progress=progress, **build_arguments
            )
            with progress.stage(f"Publishing {name} to {location}"):
                published = store.publish(target)
    except StoreError as error:
        raise BuildError(str(error)) from None
    progress.say(f"Published {name} as version {published.version} in {location}")
    return published.version
