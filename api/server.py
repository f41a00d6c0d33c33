"""Run the app under gunicorn with gthread workers.

The app is created in each worker after fork (never preloaded in the master), so every worker
owns its engines and execution contexts, and CUDA is never initialised before fork.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from api.app import create_app
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
        return create_app(self.settings)


def serve(
    settings: ServerSettings,
    host: str,
    port: int,
    workers: int,
    threads: int,
    timeout: int,
) -> None:
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
            "accesslog": "-",
            "proc_name": "ingrain-serve",
            "control_socket_disable": True,
        },
    ).run()
