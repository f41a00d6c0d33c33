"""Readiness: can this worker serve, right now, every model the server must serve?

`GET /health` says the process is alive. `GET /ready` says more: every model in the server's
loaded set (and every --preload model) is loaded in this worker, has finished its warm-up
execution, has no execution stuck past the limit and has not failed its last executions.
Each gunicorn worker holds its own models, so the answer is for the worker that took the
request; a worker loads what it is missing in the background as soon as it is asked, so every
worker converges. `GET /models/ready?name=` answers for one model. The routes are in
api.routes.probes; this is what they ask, and the background loader.
"""

from __future__ import annotations

import logging
import threading
import time

from api.settings import ReadinessLimits
from runtime.errors import ModelLoadError, ModelNotFound, ModelNotLoaded, ModelUnavailable
from runtime.registry import ModelRegistry

log = logging.getLogger(__name__)

# A model whose load failed is tried again after this long (its files may have been fixed).
RETRY_LOAD_S = 30.0


class Readiness:
    def __init__(
        self, registry: ModelRegistry, preload: tuple[str, ...], limits: ReadinessLimits
    ) -> None:
        self.registry = registry
        self.preload = preload
        self.limits = limits
        self._lock = threading.Lock()
        self._loading: set[str] = set()
        self._failed: dict[str, tuple[str, float]] = {}  # name -> (why, when)

    def load_preloaded(self) -> None:
        """Load and warm the --preload models now, before this worker takes requests. A model
        that cannot load is logged and reported not ready; the others still serve."""
        for name in self.preload:
            self._load(name)

    def required(self) -> list[str]:
        """The models this server must serve: its loaded set (which starts as the --preload
        models, and follows /load_model and /unload_model) less the models removed from the
        repository since (a removal is deliberate, and must not take a server that serves
        the others out of its load balancer; a repository directory that is gone is not);
        without a loaded set, the preloaded ones."""
        if self.registry.loaded_set is None:
            return list(self.preload)
        loaded = list(self.registry.loaded_set.read())
        repository = self.registry.repository
        if not repository.root.is_dir():  # unmounted or gone: not a deliberate removal
            return loaded
        return [name for name in loaded if repository.contains(name)]

    def problems(self, names: list[str]) -> dict[str, str]:
        """Why each of `names` is not ready in this worker (empty when all are)."""
        return {name: reason for name in names if (reason := self.model_problem(name)) is not None}

    def model_problem(self, name: str) -> str | None:
        model = self.registry.held(name)
        if model is not None:
            return model.not_ready(self.limits.max_execution_s, self.limits.max_failed_executions)
        with self._lock:
            failed = self._failed.get(name)
            if failed is not None and time.monotonic() - failed[1] < RETRY_LOAD_S:
                return failed[0]
            if name not in self._loading:
                self._loading.add(name)
                threading.Thread(target=self._load, args=(name,), daemon=True).start()
        return "loading in this worker"

    def _load(self, name: str) -> None:
        try:
            with self.registry.use(name):
                why = None
        except (ModelNotFound, ModelNotLoaded, ModelUnavailable):
            why = "no longer in the engine repository or the loaded set"
        except ModelLoadError as error:
            why = f"cannot be loaded: {error}"
        except Exception as error:  # readiness reports it; the worker keeps serving the others
            log.exception("cannot load %s", name)
            why = f"cannot be loaded: {error}"
        with self._lock:
            self._loading.discard(name)
            if why is None:
                self._failed.pop(name, None)
            else:
                log.error("%s: %s", name, why)
                self._failed[name] = (why, time.monotonic())
