"""Write an engine directory atomically: build beside the target, then rename it into place.

A build holds an exclusive lock on its repository entry, so concurrent builds of one model run
one after the other, and leftovers of a killed build (whose lock died with it) are safe to sweep.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder.errors import BuildError
from runtime.repository import ModelNotFound, Repository, slugify

STAGING_PREFIX = ".building-"


@contextmanager
def entry_lock(root: Path, slug: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{slug}", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def target_directory(repository: Repository, name: str, force: bool) -> Path | None:
    """Where the model `name` goes, or None when it already exists and must not be replaced."""
    try:
        existing = repository.find(name)
    except ModelNotFound:
        target = repository.root / slugify(name)
        if target.exists():
            raise BuildError(
                f"{target} already exists but does not hold {name!r}; move it away or "
                "choose another --name"
            ) from None
        return target
    return existing.directory if force else None


@contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """A fresh directory beside `target`; on success it replaces `target`, on failure it goes.

    Call this with the entry lock held.
    """
    for leftover in target.parent.glob(f"{STAGING_PREFIX}{target.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    retired = target.with_name(f"{STAGING_PREFIX}{target.name}-retired")
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
