"""Route handlers: parse the request, call the runtime, shape the answer. Nothing else."""

from __future__ import annotations

import time
from typing import Any

import falcon
import orjson

from api import params
from api.settings import Limits
from runtime.registry import ModelRegistry


def respond(resp: falcon.Response, payload: dict[str, Any]) -> None:
    """JSON out; orjson writes numpy float32 arrays directly."""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


class Health:
    def __init__(self, message: str) -> None:
        self.message = message

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(resp, {"message": self.message})


class EmbedText:
    def __init__(self, registry: ModelRegistry, limits: Limits) -> None:
        self.registry = registry
        self.limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body = params.read_json_object(req, self.limits)
        name = params.model_name(body, self.limits)
        texts = params.texts(body, self.limits)
        req.context.model, req.context.items = name, len(texts)
        normalize, n_dims = params.normalize(body), params.n_dims(body)
        embeddings = self.registry.get(name).embed_text(texts, normalize, n_dims)
        respond(resp, {"embeddings": embeddings, "processingTimeMs": elapsed_ms(started)})
