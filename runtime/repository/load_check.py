"""Whether an engine directory loads, tried in a child process before a fetched version
replaces the cached one: a published version that cannot load never takes the place of the
last one that could (a restarted or replaced worker then still has a model to serve), and the
trial costs the serving process no memory.

Run as `python -m runtime.repository.load_check DIRECTORY BACKEND PRECISION COMPILE_CACHE`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from runtime.config import RuntimeConfig
from runtime.repository.manifest import Manifest

FAILED = "cannot load: "
TIMEOUT_S = 600.0


def load_checker(runtime: RuntimeConfig, timeout_s: float = TIMEOUT_S) -> Callable[[Path], None]:
    """A check that raises LoadCheckFailed unless `directory` loads and warms up with
    `runtime`'s backend and precision (in a child process, one inference thread)."""

    def check(directory: Path) -> None:
        precision = runtime.precision_for(Manifest.read(directory).name)
        command = [sys.executable, "-m", __name__, str(directory), runtime.backend, precision]
        try:
            result = subprocess.run(
                [*command, runtime.compile_cache],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise LoadCheckFailed(f"loading it took over {timeout_s:g} s") from None
        if result.returncode != 0:
            lines = result.stderr.splitlines()
            why = [line.removeprefix(FAILED) for line in lines if line.startswith(FAILED)]
            raise LoadCheckFailed((why or lines[-1:] or [f"exit {result.returncode}"])[-1])

    return check


class LoadCheckFailed(RuntimeError):
    """The engine directory does not load; the message says why."""


def main(directory: str, backend: str, precision: str, compile_cache: str) -> int:
    from runtime.models import Model
    from runtime.repository import Entry

    path = Path(directory)
    runtime = RuntimeConfig(
        backend=backend, precision=precision, threads=1, compile_cache=compile_cache
    )
    try:
        Model.load(Entry(path, Manifest.read(path)), runtime).close()
    except Exception as error:
        print(f"{FAILED}{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
