"""OpenAI's embeddings API: POST /v1/embeddings, GET /v1/models and GET /v1/models/{model}.

Requests and responses follow OpenAI's reference exactly, so its SDKs and the tools built on
them work unchanged with `base_url` pointed here and a server API key as their `api_key`.
Extra request fields, as other servers offer: `truncate`, `truncation_direction`, `prompt`,
`prompt_name`. Errors on /v1 routes come out in OpenAI's shape (api.errors).
"""

from __future__ import annotations

import base64
import calendar
import time
from typing import Any

import falcon
import numpy as np

from api import params
from api.resources import respond
from api.settings import Limits
from runtime.errors import InputError
from runtime.models import Model
from runtime.registry import ModelRegistry
from runtime.repository import Repository
from runtime.repository.manifest import Manifest
from runtime.text import TextOptions, TextTooLong, TokenRow

ENCODINGS = ("float", "base64")


class OpenAIError(falcon.HTTPError):
    """An HTTP error that names the request field at fault, as OpenAI's `param` does."""

    def __init__(self, status: str, message: str, param: str | None, code: str | None = None):
        super().__init__(status, description=message, code=code)
        self.param = param


def invalid(message: str, param: str | None, code: str | None = None) -> OpenAIError:
    return OpenAIError(falcon.HTTP_400, message, param, code)


def add_openai_routes(
    app: falcon.App, registry: ModelRegistry, repository: Repository, limits: Limits
) -> None:
    app.add_route("/v1/embeddings", Embeddings(registry, limits))
    models = Models(repository)
    app.add_route("/v1/models", models)
    # Model ids hold slashes (org/model); OpenAI's client sends them percent-encoded or not.
    app.add_route("/v1/models/{model:path}", models, suffix="model")


def _inputs(value: Any, limits: Limits) -> tuple[list[str] | None, list[list[int]] | None]:
    """`input` as texts, or as token-id rows: a string, strings, token ids, or lists of them."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise invalid(
            "input must be a string, an array of strings, an array of token ids or an array of "
            "arrays of token ids, and not empty",
            "input",
        )
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        value = [value]
    if len(value) > limits.max_items:
        raise OpenAIError(
            falcon.HTTP_413,
            f"input has {len(value)} items; the limit is {limits.max_items} per request",
            "input",
        )
    if all(isinstance(item, str) for item in value):
        for index, text in enumerate(value):
            if len(text) > limits.max_text_chars:
                raise OpenAIError(
                    falcon.HTTP_413,
                    f"input[{index}] has {len(text)} characters; the limit is "
                    f"{limits.max_text_chars}",
                    "input",
                )
        return value, None
    for index, row in enumerate(value):
        if not isinstance(row, list) or not row or not all(_is_id(i) for i in row):
            raise invalid(
                f"input[{index}] must be a string or a non-empty array of token ids, like the "
                "other items",
                "input",
            )
    return None, value


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(body: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(key)
    if value is None:
        return default
    if value not in choices:
        raise invalid(f"{key} must be one of {', '.join(choices)}, not {value!r:.40}", key)
    return value


def _model_name(body: dict[str, Any], limits: Limits) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name.strip() or len(name) > limits.max_name_chars:
        raise invalid(
            "model must be the name of a model in the repository (GET /v1/models)", "model"
        )
    return name


def _dimensions(body: dict[str, Any], model: Model) -> int | None:
    value = body.get("dimensions")
    if value is None:
        return None
    dim = model.text.tower.spec.dim if model.text is not None else 0
    if not _is_id(value) or not 1 <= value <= dim:
        raise invalid(
            f"dimensions must be a whole number from 1 to {dim} for this model", "dimensions"
        )
    return value


class Embeddings:
    def __init__(self, registry: ModelRegistry, limits: Limits) -> None:
        self.registry = registry
        self.limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = params.read_json_object(req, self.limits)
        name = _model_name(body, self.limits)
        req.context.model = name
        texts, ids = _inputs(body.get("input"), self.limits)
        encoding = _choice(body, "encoding_format", ENCODINGS, "float")
        options = params.text_options(body, self.limits)
        if ids is not None and (options.prompt or options.prompt_name):
            raise invalid("prompts apply to text input, not to token ids", _prompt_param(options))
        req.context.items = len(texts or ids or [])
        with self.registry.use(name) as model:
            if model.text is None:
                raise invalid(
                    f"model {name!r} does not embed text: it takes {model.modalities}", "model"
                )
            dimensions = _dimensions(body, model)
            rows = self._rows(model, texts, ids, options)
            embeddings = model.embed_tokens(rows, True, dimensions)
            tokens = sum(len(row.ids) for row in rows)
        respond(
            resp,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": index, "embedding": _encoded(row, encoding)}
                    for index, row in enumerate(embeddings)
                ],
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    @staticmethod
    def _rows(
        model: Model,
        texts: list[str] | None,
        ids: list[list[int]] | None,
        options: TextOptions,
    ) -> list[TokenRow]:
        assert model.text is not None
        try:
            model.text.resolve_prompt(options)
        except InputError as error:
            raise invalid(str(error), _prompt_param(options)) from None
        try:
            if texts is not None:
                return model.tokenize(texts, options)
            assert ids is not None
            return model.text.id_rows(ids, options)
        except TextTooLong as error:
            raise invalid(error.describe("input"), "input", "context_length_exceeded") from None
        except InputError as error:
            raise invalid(str(error), "input") from None


def _prompt_param(options: TextOptions) -> str:
    return "prompt_name" if options.prompt_name is not None else "prompt"


def _encoded(embedding: np.ndarray, encoding: str) -> np.ndarray | str:
    """A row as floats, or as base64 of its little-endian float32 bytes (what OpenAI's clients
    decode with numpy.frombuffer(..., dtype="float32"))."""
    if encoding == "base64":
        return base64.b64encode(embedding.astype("<f4").tobytes()).decode("ascii")
    return embedding


def _model_object(manifest: Manifest) -> dict[str, Any]:
    created = manifest.build.get("created")
    try:
        stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        stamp = 0
    return {"id": manifest.name, "object": "model", "created": stamp, "owned_by": "ingrain"}


class Models:
    """The repository's models; answered from the manifests, so nothing is loaded."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        entries = self.repository.entries()
        respond(resp, {"object": "list", "data": [_model_object(e.manifest) for e in entries]})

    def on_get_model(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        req.context.model = model
        respond(resp, _model_object(self.repository.find(model).manifest))
