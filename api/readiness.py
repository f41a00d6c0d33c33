"""Readiness: can this worker serve, right now, every model the server must serve?

`GET /health` says the process is alive. `GET /ready` says more: every model in the server's
loaded set (and every --preload model) is loaded in this worker, has finished its warm-up
execution, has no execution stuck past the limit and has not failed its last executions.
Each gunicorn worker holds its own models, so the answer is for the worker that took the
request; a worker loads what it is missing in the background as soon as it is asked, so every
worker converges. `GET /models/ready?name=` answers for one model.
"""

from __future__ import annotations

import logging
import threading
import time

import falcon

from api import params
from api.auth import Access
from api.resources import respond
from api.settings import Limits, ReadinessLimits
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


def _summary(problems: dict[str, str]) -> str:
    return "not ready: " + "; ".join(f"{name}: {why}" for name, why in problems.items())


class Ready:
    """GET /ready: 200 when every required model is ready in this worker, else 503. Open, like
    /health, so that probes need no key."""

    access = Access.OPEN

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        required = self.readiness.required()
        problems = self.readiness.problems(required)
        models = [
            {"name": name, "ready": name not in problems}
            | ({"reason": problems[name]} if name in problems else {})
            for name in required
        ]
        # Models skipped because their objects or files cannot be read: reported, but they do
        # not make the server unready (it serves the others; every server would be alike).
        skipped = self.readiness.registry.repository.unreadable()
        unreadable = (
            {"unreadable": [{"name": n, "reason": why} for n, why in skipped.items()]}
            if skipped
            else {}
        )
        if problems:
            resp.status = falcon.HTTP_503
            body = {"error": _summary(problems), "ready": False, "models": models}
            respond(resp, body | unreadable)
            return
        respond(resp, {"ready": True, "models": models} | unreadable)


class ModelReady:
    """GET /models/ready?name=: one model's readiness in this worker (model names hold '/',
    so the name is a query parameter, as on /model_embedding_size)."""

    def __init__(self, readiness: Readiness, limits: Limits) -> None:
        self.readiness = readiness
        self.limits = limits

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = params.model_name({"name": req.get_param("name")}, self.limits)
        req.context.model = name
        registry = self.readiness.registry
        registry.repository.find(name)  # 404 when it is not even built
        if registry.loaded_set is not None and name not in self.readiness.required():
            reason = "not loaded; load it with /load_model"
        else:
            reason = self.readiness.model_problem(name)
        if reason is not None:
            resp.status = falcon.HTTP_503
            respond(resp, {"error": _summary({name: reason}), "name": name, "ready": False})
            return
        respond(resp, {"name": name, "ready": True})
