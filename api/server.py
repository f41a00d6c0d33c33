"""Run the app under gunicorn with gthread workers.

The app is created in each worker after fork (never preloaded in the master), so every worker
owns its engines and execution contexts, and CUDA is never initialised before fork.

Metrics: prometheus-client's multiprocess mode needs its directory in the environment before
prometheus_client is first imported, so `serve` sets it up before importing the app.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from api.settings import ServerSettings


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


def _worker_exited(server, worker) -> None:
    from prometheus_client import multiprocess

    # Drops the dead worker's live gauges; its counters stay, so totals never go backwards.
    multiprocess.mark_process_dead(worker.pid)


def serve(
    settings: ServerSettings,
    host: str,
    port: int,
    workers: int,
    threads: int,
    timeout: int,
) -> None:
    metrics_dir = tempfile.mkdtemp(prefix="ingrain-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        GunicornServer(
            settings,
            {
                "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                "timeout": timeout,
                "graceful_timeout": 30,
                "keepalive": 5,
                "preload_app": False,
                "proc_name": "ingrain-serve",
                "control_socket_disable": True,
                "child_exit": _worker_exited,
            },
        ).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
