"""Where ingrain-build writes a model: its entry in the repository, or a refusal."""

from __future__ import annotations

from pathlib import Path

from builder.errors import BuildError
from runtime.repository import ModelNotFound, Repository, slugify


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
