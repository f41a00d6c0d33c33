"""The probes: GET /health (the process answers), /ready and /models/ready (the models it must
serve are loaded and executing in this worker; api.services.readiness)."""

from __future__ import annotations

import falcon

from api.auth import Access, request_port
from api.routes import schemas
from api.routes.common import model_in_query, respond
from api.services.readiness import Readiness
from api.settings import Limits


class Health:
    """One app answers both ports; the port a request came in on says which server it asks."""

    def __init__(self, model_port: int | None) -> None:
        self.model_port = model_port

    access = Access.OPEN

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        port = request_port(req)
        server = "model" if port is not None and port == self.model_port else "inference"
        respond(resp, schemas.Message(f"The {server} server is running."))

    on_head = on_get


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
            schemas.ModelReadiness(name, name not in problems, problems.get(name))
            for name in required
        ]
        if problems:
            resp.status = falcon.HTTP_503
            respond(resp, schemas.Readiness(False, models, _summary(problems)))
            return
        respond(resp, schemas.Readiness(True, models))


class ModelReady:
    """GET /models/ready?name=: one model's readiness in this worker (model names hold '/',
    so the name is a query parameter, as on /model_embedding_size)."""

    def __init__(self, readiness: Readiness, limits: Limits) -> None:
        self.readiness = readiness
        self.limits = limits

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = model_in_query(req, self.limits)
        registry = self.readiness.registry
        registry.repository.find(name)  # 404 when it is not even built
        if registry.loaded_set is not None and name not in self.readiness.required():
            reason = "not loaded; load it with /load_model"
        else:
            reason = self.readiness.model_problem(name)
        if reason is not None:
            resp.status = falcon.HTTP_503
            respond(resp, schemas.OneModelReadiness(name, False, _summary({name: reason})))
            return
        respond(resp, schemas.OneModelReadiness(name, True))
