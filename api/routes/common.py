"""What every route shares: JSON answers, timing, and the decoding of a model route's body."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import falcon
import msgspec
import orjson

from api.routes import params
from api.settings import Limits
from runtime.registry import ModelRegistry

T = TypeVar("T")


def _write_numpy(value: Any) -> msgspec.Raw:
    """numpy arrays and scalars, written by orjson (which writes them fastest)."""
    return msgspec.Raw(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


_ENCODER = msgspec.json.Encoder(enc_hook=_write_numpy)


def respond(resp: falcon.Response, payload: msgspec.Struct | dict[str, Any]) -> None:
    """JSON out: a response type of api.routes.schemas (or a dict), numpy arrays included."""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _ENCODER.encode(payload)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


class ModelRoute:
    """A route that runs one model: its body decoded, the model named checked and logged."""

    def __init__(self, registry: ModelRegistry, limits: Limits) -> None:
        self.registry = registry
        self.limits = limits

    def _request(self, req: falcon.Request, kind: type[T], field: str = "name") -> T:
        """The body as `kind`, with the model it names checked and logged."""
        request = params.decode(req, kind, self.limits)
        req.context.model = params.check_name(getattr(request, field), self.limits, field)
        return request


def model_in_query(req: falcon.Request, limits: Limits) -> str:
    """The `name` query parameter of the GET routes about one model (names hold '/')."""
    name = req.get_param("name")
    if name is None:
        raise params.field_error("name", '"name" is required: the model, as ?name=')
    req.context.model = params.check_name(name, limits)
    return name
