"""Run the app under gunicorn with gthread workers (api.server.workers: requests are read
whole, under a deadline, before a thread serves them).

The app is created in each worker after fork (never preloaded in the master), so every worker
owns its engines and execution contexts, and CUDA is never initialised before fork.

Metrics: prometheus-client's multiprocess mode needs its directory in the environment before
prometheus_client is first imported, so `serve` sets it up before importing the app.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from api.server import malloc
from api.settings import ServerSettings
from runtime.errors import ModelNotFound
from runtime.repository import Repository
from runtime.repository.loaded_set import LoadedSet, Models

# gunicorn's largest request line (its default is 4094): paths up to it reach the app, which
# answers a name too long in the route family's error shape instead of gunicorn's HTML 414.
MAX_REQUEST_LINE = 8190
# On SIGTERM, workers stop accepting and in-flight requests get this long to finish
# (the pods in deploy/kubernetes get this plus their preStop pause as termination grace).
GRACEFUL_TIMEOUT_S = 30


class GunicornServer(BaseApplication):
    def __init__(self, settings: ServerSettings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from api.app import create_app

        return create_app(self.settings)


def _worker_started(worker) -> None:
    malloc.trim_periodically()


def _worker_exited(server, worker) -> None:
    from prometheus_client import multiprocess

    # Drops the dead worker's live gauges; its counters stay, so totals never go backwards.
    multiprocess.mark_process_dead(worker.pid)


def initial_loaded_set(settings: ServerSettings) -> Models:
    """The --preload models, or every model in the repository up to the maximum; and the
    --default-model models in either case (listed first, so the maximum never leaves them out).
    A preloaded model that could not be fetched from object storage stays in the set (library
    unknown): it loads once a readable version has been fetched."""
    repository = Repository(settings.engines)
    if settings.preload:
        names = dict.fromkeys((*settings.preload, *settings.default_models))
        return {name: _library(repository, name) for name in names}
    entries = sorted(
        repository.entries(), key=lambda entry: entry.name not in settings.default_models
    )
    return {entry.name: entry.manifest.library for entry in entries[: settings.max_loaded_models]}


def _library(repository: Repository, name: str) -> str | None:
    try:
        return repository.find(name).manifest.library
    except ModelNotFound:
        return None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PortUnavailable(OSError):
    """A port the server must listen on cannot be bound; the message names it and its flag."""


def check_bindable(host: str, port: int, flag: str) -> None:
    """Fail with one clear line before gunicorn would (with "Can't connect to ...")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise PortUnavailable(
                f"cannot listen on {_address(host, port)} ({flag}): {error.strerror}; choose "
                f"another with {flag} PORT"
                + (" or turn the model port off with --model-port none" if "model" in flag else "")
            ) from None


def serve(
    settings: ServerSettings,
    host: str,
    port: int,
    workers: int,
    threads: int,
    timeout: int,
    model_host: str | None = None,
) -> None:
    """Run until stopped. The run directory holds this server's metrics files and loaded-model
    set; it is made here, before any worker exists, and removed at exit."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError(
            "prometheus_client was imported before its multiprocess directory was set: "
            "metrics would not be summed across workers"
        )
    run_dir = Path(tempfile.mkdtemp(prefix="ingrain-serve-"))
    (run_dir / "metrics").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics")
    loaded = LoadedSet(run_dir / "loaded.json")
    loaded.write(initial_loaded_set(settings))
    settings = replace(settings, loaded_set=loaded.path)
    check_bindable(host, port, "--port")
    binds = [_address(host, port)]
    if settings.model_port is not None:
        check_bindable(model_host or host, settings.model_port, "--model-port")
        binds.append(_address(model_host or host, settings.model_port))
    try:
        GunicornServer(
            settings,
            {
                "bind": binds,
                "workers": workers,
                "threads": threads,
                "worker_class": "api.server.workers.GatheringWorker",
                "worker_connections": settings.limits.max_connections,
                "timeout": timeout,
                "graceful_timeout": GRACEFUL_TIMEOUT_S,
                "keepalive": 5,
                "limit_request_line": MAX_REQUEST_LINE,
                "preload_app": False,
                "proc_name": "ingrain-serve",
                "control_socket_disable": True,
                "child_exit": _worker_exited,
                "post_worker_init": _worker_started,
            },
        ).run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
