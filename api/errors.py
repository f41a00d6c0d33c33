"""Every error leaves as `{"error": "..."}` with the right status; nothing leaks a stack trace."""

from __future__ import annotations

import logging
import re
import shlex

import falcon
import orjson

from api.routes.task_errors import describe
from api.routes.tei_errors import TEIError, error_type, is_tei_request
from runtime.errors import (
    ClientGone,
    InputError,
    ModelLoadError,
    ModelNotFound,
    ModelNotLoaded,
    ModelUnavailable,
    Overloaded,
)

log = logging.getLogger(__name__)


OPENAI_PREFIX = "/v1/"
# OpenAI's default `code` by status, where the raising code names none.
OPENAI_CODES = {401: "invalid_api_key", 413: "request_too_large", 415: "unsupported_media_type"}


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """`{"error": "..."}`, or on the OpenAI routes OpenAI's `{"error": {"message", "type",
    "param", "code"}}`, so its SDKs raise their own typed errors, or on Text Embeddings
    Inference requests TEI's `{"error", "error_type"}`."""
    resp.content_type = falcon.MEDIA_JSON
    message = error.description or error.title
    if isinstance(error, TEIError) or is_tei_request(req):
        resp.data = orjson.dumps({"error": message, "error_type": error_type(error)})
        return
    # The resolved route where there is one: `//v1/embeddings` is routed as /v1/embeddings.
    path = req.uri_template or re.sub("/+", "/", req.path)
    if not (path + "/").startswith(OPENAI_PREFIX):
        resp.data = orjson.dumps({"error": message})
        return
    status = error.status_code
    resp.data = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "server_error" if status >= 500 else "invalid_request_error",
                "param": getattr(error, "param", None),
                "code": error.code or OPENAI_CODES.get(status),
            }
        }
    )


def install_error_handlers(app: falcon.App) -> None:
    app.set_error_serializer(serialize_error)
    app.add_error_handler(falcon.HTTPRouteNotFound, _route_not_found)
    app.add_error_handler(falcon.HTTPMethodNotAllowed, _method_not_allowed)
    app.add_error_handler(ModelNotFound, _model_not_found)
    app.add_error_handler(InputError, _input_error)
    app.add_error_handler(ModelLoadError, _model_load_error)
    app.add_error_handler(ModelNotLoaded, _model_not_loaded)
    app.add_error_handler(Overloaded, _overloaded)
    app.add_error_handler(ModelUnavailable, _model_unavailable)
    app.add_error_handler(ClientGone, _client_gone)
    app.add_error_handler(Exception, _unexpected)


def _route_not_found(req, resp, error, params):
    raise falcon.HTTPNotFound(description=f"there is no route {req.method} {req.path}")


def _method_not_allowed(req, resp, error, params):
    allowed = error.headers.get("Allow", "") if error.headers else ""
    raise falcon.HTTPMethodNotAllowed(
        allowed.split(", ") if allowed else [],
        description=f"{req.path} does not accept {req.method}; use {allowed or 'another method'}",
    )


def _model_not_found(req, resp, error: ModelNotFound, params):
    raise falcon.HTTPNotFound(
        description=f"model {error.name!r} is not in the engine repository; build it with: "
        f"ingrain-build {shlex.quote(error.name)}",
        code="model_not_found",
    )


def _model_not_loaded(req, resp, error: ModelNotLoaded, params):
    raise falcon.HTTPBadRequest(
        description=f"Model {error.name} is not loaded; load it with /load_model"
    )


def _overloaded(req, resp, error: Overloaded, params):
    raise falcon.HTTPServiceUnavailable(
        description=f"the server is overloaded: {error}", retry_after=1
    )


def _model_unavailable(req, resp, error: ModelUnavailable, params):
    raise falcon.HTTPServiceUnavailable(
        description=f"the model is not available right now: {error}; retry shortly",
        retry_after=1,
    )


def _client_gone(req, resp, error: ClientGone, params):
    # nginx's status for it: nobody reads the answer, but the access log and metrics say why.
    raise falcon.HTTPError("499 Client Closed Request", description=str(error))


def _input_error(req, resp, error: InputError, params):
    raise falcon.HTTPBadRequest(description=describe(error))


def _model_load_error(req, resp, error: ModelLoadError, params):
    log.error("%s", error)
    raise falcon.HTTPInternalServerError(description=f"the model cannot be loaded: {error}")


def _unexpected(req, resp, error: Exception, params):
    # Falcon matches handlers by the exception's MRO, so HTTPErrors never reach this one.
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(
        description="internal server error; the server log has the details"
    )
