"""The server's set of loaded models, shared by every gunicorn worker through one small file.

"Loaded" is a property of the server, not of the worker that took a request: /load_model and
/unload_model change this file (atomically, under an exclusive lock), and every worker compares
it with what it holds before it answers, loading lazily and dropping what left the set.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.repository.manifest import write_atomically

Models = dict[str, str | None]  # name -> library (None: not fetched yet), in load order


class LoadedSet:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> Models:
        try:
            return dict(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return {}

    def stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever the file is rewritten (each write is a new file renamed in)."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size

    def write(self, models: Models) -> None:
        write_atomically(self.path, json.dumps(models))

    def update(self, change: Callable[[Models], Models]) -> Models:
        """Read, change and write the set as one step against other processes."""
        with self._locked():
            models = change(self.read())
            self.write(models)
            return models

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
