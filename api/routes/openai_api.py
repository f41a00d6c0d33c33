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

import falcon
import numpy as np

from api.routes import params, schemas
from api.routes.common import respond
from api.routes.task_errors import describe
from api.settings import Limits
from runtime.errors import DimensionsOutOfRange, InputError
from runtime.models import Model
from runtime.registry import ModelRegistry
from runtime.repository import Repository
from runtime.repository.manifest import Manifest
from runtime.tasks.text_embedding import TextEmbedding, TextEmbeddingOptions
from runtime.tasks.text_inputs import tokens_read
from runtime.text import TextOptions, TextTooLong, TokenRow


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
    models = Models(repository, limits)
    app.add_route("/v1/models", models)
    # Model ids hold slashes (org/model); OpenAI's client sends them percent-encoded or not.
    app.add_route("/v1/models/{model:path}", models, suffix="model")


def _inputs(
    value: str | list[str | int | list[int]], limits: Limits
) -> tuple[list[str] | None, list[list[int]] | None]:
    """`input` as texts, or as token-id rows: a string, strings, token ids, or lists of them."""
    if isinstance(value, list) and all(isinstance(item, int) for item in value):
        value = [value]
    items = params.check_items("input", value, limits.max_items)
    if all(isinstance(item, str) for item in items):
        params.check_chars("input", items, limits.max_text_chars, as_json=False)
        return items, None
    for index, row in enumerate(items):
        if not isinstance(row, list):
            raise invalid(
                f"input[{index}] must be a string or a non-empty array of token ids, like the "
                "other items",
                "input",
            )
    return None, items


class Embeddings:
    def __init__(self, registry: ModelRegistry, limits: Limits) -> None:
        self.registry = registry
        self.limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = params.decode(req, schemas.OpenAIEmbeddingRequest, self.limits)
        name = req.context.model = params.check_name(request.model, self.limits, "model")
        texts, ids = _inputs(request.input, self.limits)
        options = params.text_options(request, self.limits)
        if ids is not None and (options.prompt or options.prompt_name):
            raise invalid("prompts apply to text input, not to token ids", _prompt_param(options))
        req.context.items = len(texts or ids or [])
        with self.registry.use(name) as model:
            task = _task(model, request.dimensions, options)
            rows = _rows(task, texts, ids, options)
            embeddings = task.run(rows)
        tokens = tokens_read(rows)
        data = [
            schemas.OpenAIEmbedding(index=index, embedding=_encoded(row, request.encoding_format))
            for index, row in enumerate(embeddings)
        ]
        usage = schemas.OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens)
        respond(resp, schemas.OpenAIEmbeddings(data=data, model=name, usage=usage))


def _task(model: Model, dimensions: int | None, options: TextOptions) -> TextEmbedding:
    """The text-embedding pipeline for the request; its refusals name the param at fault."""
    try:
        return TextEmbedding(model, TextEmbeddingOptions(n_dims=dimensions, text=options))
    except DimensionsOutOfRange as error:
        raise invalid(
            f"dimensions must be a whole number from 1 to {error.dim} for this model",
            "dimensions",
        ) from None
    except InputError as error:
        raise invalid(f"{describe(error)} (this route embeds text)", "model") from None


def _rows(
    task: TextEmbedding,
    texts: list[str] | None,
    ids: list[list[int]] | None,
    options: TextOptions,
) -> list[TokenRow]:
    try:
        task.encoder.resolve_prompt(options)
    except InputError as error:
        raise invalid(describe(error), _prompt_param(options)) from None
    try:
        return task.prepare(texts if texts is not None else ids or [])
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


def _model_object(manifest: Manifest) -> schemas.OpenAIModel:
    created = manifest.build.get("created")
    try:
        stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        stamp = 0
    return schemas.OpenAIModel(id=manifest.name, created=stamp)


class Models:
    """The repository's models; answered from the manifests, so nothing is loaded."""

    def __init__(self, repository: Repository, limits: Limits) -> None:
        self.repository = repository
        self.limits = limits

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        entries = self.repository.entries()
        respond(resp, schemas.OpenAIModels(data=[_model_object(e.manifest) for e in entries]))

    def on_get_model(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        req.context.model = params.check_name(model, self.limits, "model")
        respond(resp, _model_object(self.repository.find(model).manifest))
