"""The engine repository: one directory per model, found by the name in its manifest.

A model name from a request is never used as a path: it is looked up among the manifests.
Directories whose names start with a dot are builds in progress or being removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ModelNotFound
from runtime.repository.manifest import MANIFEST_FILE, Manifest, ManifestError

log = logging.getLogger(__name__)

DEFAULT_ENGINES = "engines"


def slugify(name: str) -> str:
    """A filesystem-safe directory name for a model name (`org/model` -> `org--model`)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.")
    if not slug:
        raise ValueError(f"model name {name!r} has no letters or digits to name a directory")
    return slug


@dataclass(frozen=True)
class Entry:
    directory: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.directory.rglob("*") if path.is_file())


class Repository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entries(self) -> list[Entry]:
        """Every complete model in the repository, sorted by name; broken ones are logged."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in sorted(self.root.iterdir()):
            if directory.name.startswith(".") or not (directory / MANIFEST_FILE).is_file():
                continue
            try:
                found.append(Entry(directory, Manifest.read(directory)))
            except ManifestError as error:
                log.warning("skipping %s: %s", directory, error)
        return sorted(found, key=lambda entry: entry.name)

    def find(self, name: str) -> Entry:
        """The model stored under `name`; its slug's directory first, then a scan of all."""
        try:
            slugged = self._read(self.root / slugify(name))
        except ValueError:
            slugged = None
        if slugged is not None and slugged.name == name:
            return slugged
        for entry in self.entries():
            if entry.name == name:
                return entry
        raise ModelNotFound(name, self.root)

    def contains(self, name: str) -> bool:
        try:
            self.find(name)
        except ModelNotFound:
            return False
        return True

    @staticmethod
    def _read(directory: Path) -> Entry | None:
        try:
            return Entry(directory, Manifest.read(directory))
        except ManifestError:
            return None

    def remove(self, name: str) -> Entry:
        """Delete a model: first renamed out of sight so no reader sees it half-deleted."""
        entry = self.find(name)
        doomed = entry.directory.with_name(f".removing-{entry.directory.name}-{os.getpid()}")
        try:
            entry.directory.rename(doomed)
        except FileNotFoundError:  # someone else removed it first
            raise ModelNotFound(name, self.root) from None
        shutil.rmtree(doomed)
        return entry
