"""SHA-256 digests of an engine directory's files, as the manifest records them.

The builder records them; a copy fetched from object storage is checked against them, file by
file, before it is served.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.repository.manifest import MANIFEST_FILE, ManifestError

CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "bytes"}} for every file but the manifest; names starting
    with a dot (compile caches, staging leftovers) are not part of the model."""
    found = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or relative.as_posix() == MANIFEST_FILE:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        found[relative.as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return found


def safe_relative(name: str) -> PurePosixPath:
    """A manifest's file name as a path that stays inside the engine directory and that any
    file system can hold: no control characters, no hidden or over-long parts, not the
    manifest nor under it."""
    path = PurePosixPath(name)
    if (
        not name
        or len(name.encode("utf-8", "surrogatepass")) > 1024
        or path.is_absolute()
        or any(part in ("", ".", "..") or part.startswith(".") for part in path.parts)
        or any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in path.parts)
        or any(ord(char) < 32 or ord(char) == 127 for char in name)
        or path.as_posix() != name
        or path.parts[0] == MANIFEST_FILE
    ):
        raise ManifestError(f"the manifest names a file {name!r} outside the engine directory")
    return path


def check_layout(names: set[str], needed: set[str]) -> None:
    """Raise ManifestError unless the file names can all be written (none is another's
    folder) and include every file the model needs."""
    folders = {str(parent) for name in names for parent in PurePosixPath(name).parents}
    if clash := sorted(names & folders):
        raise ManifestError(f"the manifest names {clash[0]!r} as both a file and a folder")
    if missing := sorted(needed - names):
        raise ManifestError(f"the manifest's file list lacks {', '.join(missing)}")


def check_files(directory: Path, files: dict[str, dict[str, Any]]) -> None:
    """Raise ManifestError naming the first file that is missing or differs from its digest."""
    for name, expected in files.items():
        path = directory / safe_relative(name)
        if not path.is_file():
            raise ManifestError(f"{path} is missing")
        if sha256_file(path) != expected.get("sha256"):
            raise ManifestError(f"{path} does not match the SHA-256 in its manifest")
