"""Whether an engine directory loads, tried in a child process before a fetched version
replaces the cached one: a published version that cannot load never takes the place of the
last one that could (a restarted or replaced worker then still has a model to serve), and the
trial costs the serving process no memory.

Run as `python -m runtime.repository.load_check DIRECTORY BACKEND PRECISION COMPILE_CACHE
PACKING MAX_TOKENS` (PACKING: "packed" or "padded"; MAX_TOKENS: the server's token budget per
execution, which sizes the warm-up).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from runtime.config import RuntimeConfig
from runtime.repository.manifest import Manifest

FAILED = "cannot load: "
PACKED = "packed"
TIMEOUT_S = 600.0


def load_checker(runtime: RuntimeConfig, timeout_s: float = TIMEOUT_S) -> Callable[[Path], None]:
    """A check that raises LoadCheckFailed unless `directory` loads and warms up as `runtime`
    serves it: its backend, precision, packing and token budget (in a child process, one
    inference thread). With packing on, the padded text graph must load too; with it off, a
    packed graph the server would not open does not count."""

    def check(directory: Path) -> None:
        precision = runtime.precision_for(Manifest.read(directory).name)
        command = [sys.executable, "-m", __name__, str(directory), runtime.backend, precision]
        packing = PACKED if runtime.packing else "padded"
        try:
            result = subprocess.run(
                [*command, runtime.compile_cache, packing, str(runtime.batching.max_tokens)],
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


def main(
    directory: str, backend: str, precision: str, compile_cache: str, packing: str, max_tokens: str
) -> int:
    from runtime.batching import BatchingConfig
    from runtime.models import Model
    from runtime.repository import Entry

    path = Path(directory)
    runtime = RuntimeConfig(
        backend=backend,
        precision=precision,
        threads=1,
        compile_cache=compile_cache,
        packing=packing == PACKED,
        batching=BatchingConfig(max_tokens=int(max_tokens)),
    )
    try:
        entry = Entry(path, Manifest.read(path))
        Model.load(entry, runtime).close()
        if runtime.packing and any(tower.packed for tower in entry.manifest.towers.values()):
            # The padded graph too: what a server without packing serves (and int8, where the
            # packed graph has no int8 variant).
            Model.load(entry, replace(runtime, packing=False)).close()
    except Exception as error:
        print(f"{FAILED}{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    status = main(*sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The verdict is in: skip the interpreter's teardown, where OpenVINO's threads can abort the
    # process ("terminate called without an active exception") after two models were loaded.
    os._exit(status)
