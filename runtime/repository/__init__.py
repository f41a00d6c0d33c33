"""The engine repository: one directory per model, found by the name in its manifest.

A model name from a request is never used as a path: it is looked up among the manifests.
Directories whose names start with a dot are builds in progress or being removed. A model whose
manifest cannot be read is skipped (the others serve) and reported by `unreadable`, with the
models a sync from object storage could not fetch (UNREADABLE_FILE, written by the sync).
"""

from __future__ import annotations

import json
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
# {model name or slug: why it is not served}: what the last sync from object storage skipped.
UNREADABLE_FILE = ".unreadable.json"


def slugify(name: str) -> str:
    """A filesystem-safe directory name for a model name (`org/model` -> `org--model`)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.")
    if not slug:
        raise ValueError(f"model name {name!r} has no letters or digits to name a directory")
    return slug


def slug_or_none(name: str) -> str | None:
    try:
        return slugify(name)
    except ValueError:
        return None


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
        found, broken = self._scan()
        for directory, why in broken.items():
            log.warning("skipping %s: %s", directory, why)
        return found

    def unreadable(self) -> dict[str, str]:
        """The models that are not served because they cannot be read, and why: engine
        directories whose manifest is broken, and what the last sync from object storage
        could not fetch."""
        return self.listing()[1]

    def listing(self) -> tuple[list[Entry], dict[str, str]]:
        """`entries` and `unreadable` in one scan, without logging (for `ingrain list`)."""
        try:
            synced = json.loads((self.root / UNREADABLE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            synced = {}
        found, broken = self._scan()
        local = {directory.name: why for directory, why in broken.items()}
        return found, local | (synced if isinstance(synced, dict) else {})

    def _scan(self) -> tuple[list[Entry], dict[Path, str]]:
        if not self.root.is_dir():
            return [], {}
        found, broken = [], {}
        for directory in sorted(self.root.iterdir()):
            if directory.name.startswith(".") or not (directory / MANIFEST_FILE).is_file():
                continue
            try:
                found.append(Entry(directory, Manifest.read(directory)))
            except ManifestError as error:
                broken[directory] = str(error)
        return sorted(found, key=lambda entry: entry.name), broken

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
