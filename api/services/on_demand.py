"""Builds that /load_model starts for a model that is not in the repository.

Every value here comes from the network, so: only Hugging Face Hub model ids are built (never a
local path or anything that a command line could read as an option), in a child process whose
working directory is empty (so no relative name can reach the server's files), one build at a
time per server with a bounded queue (the locks are files in the server's run directory, so all
workers share them and a crashed worker releases its own), and under a deadline.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import falcon

from runtime.repository import Repository

log = logging.getLogger(__name__)

# A Hub repo id (`org/name` or `name`), optionally behind open_clip's `hf-hub:` or timm's
# `hf_hub:` scheme. Neither part may start with '.' or '-', nor hold '..' or '--'.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_]|[.-](?![.-])){0,95}"
HUB_ID = re.compile(rf"(?:hf-hub:|hf_hub:)?{_PART}(?:/{_PART})?")


def is_hub_model_id(name: str) -> bool:
    return HUB_ID.fullmatch(name) is not None


@dataclass(frozen=True)
class BuildSettings:
    enabled: bool = True
    timeout_s: float = 3600.0
    # Builds that may wait for the one running; more are refused with a 503.
    max_waiting: int = 2


class OnDemandBuilds:
    def __init__(self, repository: Repository, locks: Path, settings: BuildSettings) -> None:
        self.repository = repository
        self.locks = locks
        self.settings = settings
        locks.mkdir(parents=True, exist_ok=True)

    def build(self, name: str, library: str | None) -> None:
        """Build `name` into the repository, or raise the HTTP error that says why not."""
        library_option = f" --library {library}" if library else ""
        command = f"ingrain-build {shlex.quote(name)}{library_option}"
        if not self.settings.enabled:
            raise falcon.HTTPNotFound(
                description=f"model {name!r} is not in the engine repository and this server "
                f"does not build models on demand; build it with: {command}"
            )
        if not is_hub_model_id(name):
            raise falcon.HTTPNotFound(
                description=f"model {name!r} is not in the engine repository, and only "
                "Hugging Face Hub model ids (org/name) are built on demand"
            )
        module = "sentence_transformers" if library == "cross_encoder" else library
        needed = ("torch", "onnx", *([module] if module else []))
        missing = [module for module in needed if importlib.util.find_spec(module) is None]
        if missing:
            raise falcon.HTTPNotFound(
                description=f"model {name!r} is not in the engine repository and this server "
                f"cannot build it (no {', '.join(missing)}): run {command} "
                "or install ingrain-server[build]"
            )
        deadline = time.monotonic() + self.settings.timeout_s
        with self._waiting(), self._running(name, deadline):
            if not self.repository.contains(name):  # a build that ran meanwhile made it
                self._run(name, library, deadline)

    @contextmanager
    def _waiting(self) -> Iterator[None]:
        """One of the queue's places (the running build holds one too), or a 503."""
        with ExitStack() as stack:
            for slot in range(self.settings.max_waiting + 1):
                handle = stack.enter_context(open(self.locks / f"build-slot-{slot}", "w"))
                if _try_lock(handle):
                    yield
                    return
                stack.pop_all().close()
        raise falcon.HTTPServiceUnavailable(
            description=f"{self.settings.max_waiting + 1} model builds are already running or "
            "waiting on this server; retry later",
            retry_after=30,
        )

    @contextmanager
    def _running(self, name: str, deadline: float) -> Iterator[None]:
        with open(self.locks / "build-running", "w") as handle:
            while not _try_lock(handle):
                if time.monotonic() > deadline:
                    raise self._timed_out(name)
                time.sleep(0.2)
            yield

    def _run(self, name: str, library: str | None, deadline: float) -> None:
        argv = [sys.executable, "-m", "builder", "--skip-existing"]
        argv += ["--engines", str(self.repository.root.resolve())]
        if library:
            argv += ["--library", library]
        argv += ["--", name]
        log.info("building %s on demand", name)
        with tempfile.TemporaryDirectory(prefix="ingrain-build-") as empty:
            process = subprocess.Popen(
                argv, cwd=empty, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            try:
                _, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _stop(process)
                raise self._timed_out(name) from None
        if process.returncode != 0:
            reason = (stderr.strip().splitlines() or ["unknown error"])[-1]
            raise falcon.HTTPBadRequest(description=f"cannot build {name!r}: {reason}")

    def _timed_out(self, name: str) -> falcon.HTTPError:
        return falcon.HTTPGatewayTimeout(
            description=f"building {name!r} took longer than {self.settings.timeout_s:g} s "
            "(--build-timeout); build it with ingrain-build instead"
        )


def _stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM first, so the build removes its staging directory; SIGKILL past the grace."""
    process.terminate()
    try:
        process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
