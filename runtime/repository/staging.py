"""Write an engine directory atomically: build (or download) beside the target, then rename it
into place.

A writer holds an exclusive lock on its repository entry, so concurrent builds of one model run
one after the other, and leftovers of a killed writer (whose lock died with it) are safe to sweep.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_PREFIX = ".building-"


@contextmanager
def entry_lock(root: Path, slug: str) -> Iterator[None]:
    """An exclusive lock on one repository entry. Its file goes when the holder is done (so
    locks do not pile up); a waiter that finds its file gone or replaced locks afresh."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".lock-{slug}"
    while True:
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            if _names(path, handle):
                try:
                    yield
                finally:
                    path.unlink(missing_ok=True)
                return


def _names(path: Path, handle) -> bool:
    """Whether `path` still names the open file `handle`."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


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
    """Put `staging` at `target` in one step: readers see the old model or the new one, never
    a gap, and a kill at any point leaves one of them in place (the other is swept later)."""
    if not target.exists():
        staging.rename(target)
        return
    _exchange(staging, target)
    shutil.rmtree(staging, ignore_errors=True)  # it now holds the old model


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot swap {b} for its rebuild: {os.strerror(error)}")
