"""Route handlers: parse the request, call the runtime, shape the answer. Nothing else."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import partial
from typing import Any, TypeVar

import falcon
import msgspec
import numpy as np
import orjson

from api.auth import Access, request_port
from api.routes import params, schemas
from api.settings import Limits
from runtime.classifier import read_labels
from runtime.models import Model
from runtime.quantize import output_ranges, quantize
from runtime.registry import ModelRegistry
from runtime.repository import Entry, Repository
from runtime.text import POOLING_MASK

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


class _ModelRoute:
    def __init__(self, registry: ModelRegistry, limits: Limits) -> None:
        self.registry = registry
        self.limits = limits

    def _request(self, req: falcon.Request, kind: type[T], field: str = "name") -> T:
        """The body as `kind`, with the model it names checked and logged."""
        request = params.decode(req, kind, self.limits)
        req.context.model = params.check_name(getattr(request, field), self.limits, field)
        return request


class _Output:
    """One tower's post-processing and output precision, checked before any work is done."""

    def __init__(self, model: Model, tower: str, request: Any) -> None:
        self.normalize, self.n_dims = request.normalize, request.n_dims
        self.precision = request.precision
        model.validate(texts=tower == "text", images=tower == "image", n_dims=self.n_dims)
        encoder = model.text if tower == "text" else model.image
        assert encoder is not None
        self.ranges = output_ranges(self.precision, encoder.tower.spec, self.normalize, self.n_dims)

    def run(self, embed: Callable[..., np.ndarray], items: Any) -> np.ndarray:
        embeddings = embed(items, self.normalize, self.n_dims)
        return quantize(embeddings, self.precision, self.ranges)


class EmbedText(_ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.EmbedTextRequest)
        texts = params.check_texts("text", request.text, self.limits.max_items, self.limits)
        options = params.text_options(request, self.limits)
        req.context.items = len(texts)
        with self.registry.use(request.name) as model:
            output = _Output(model, "text", request)
            embeddings = output.run(model.embed_tokens, model.tokenize(texts, options))
        respond(resp, schemas.Embeddings(embeddings, elapsed_ms(started)))


class EmbedImage(_ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.EmbedImageRequest)
        sources = params.check_items("image", request.image, self.limits.max_items)
        headers = params.download_headers(request.image_download_headers)
        req.context.items = len(sources)
        with self.registry.use(request.name) as model:
            output = _Output(model, "image", request)
            embeddings = output.run(model.embed_images, model.load_images(sources, headers))
        respond(resp, schemas.Embeddings(embeddings, elapsed_ms(started)))


class Embed(_ModelRoute):
    """Text and/or images in one request; the two towers run at the same time."""

    def __init__(self, registry: ModelRegistry, limits: Limits) -> None:
        super().__init__(registry, limits)
        self._towers = ThreadPoolExecutor(8, thread_name_prefix="embed")

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.EmbedRequest)
        if request.text is None and request.image is None:
            raise falcon.HTTPBadRequest(description='send "text", "image" or both')
        limit = self.limits.max_items
        texts = (
            None
            if request.text is None
            else params.check_texts("text", request.text, limit, self.limits)
        )
        sources = (
            None if request.image is None else params.check_items("image", request.image, limit)
        )
        headers = params.download_headers(request.image_download_headers)
        options = params.text_options(request, self.limits)
        req.context.items = len(texts or []) + len(sources or [])
        with self.registry.use(request.name) as model:
            jobs = {}
            if texts is not None:
                output, rows = _Output(model, "text", request), model.tokenize(texts, options)
                jobs["text_embeddings"] = partial(output.run, model.embed_tokens, rows)
            if sources is not None:
                output = _Output(model, "image", request)
                # Every image is fetched and decoded before any tower runs: a bad one stops all.
                pixels = model.load_images(sources, headers)
                jobs["image_embeddings"] = partial(output.run, model.embed_images, pixels)
            # In this request's context: the batcher asks it whether the client has gone.
            running = {
                key: self._towers.submit(copy_context().run, job) for key, job in jobs.items()
            }
            answer = {key: job.result() for key, job in running.items()}
        respond(resp, schemas.TextAndImageEmbeddings(elapsed_ms(started), **answer))


class ClassifyImage(_ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.ClassifyImageRequest)
        sources = params.check_items("image", request.image, self.limits.max_items)
        headers = params.download_headers(request.image_download_headers)
        req.context.items = len(sources)
        with self.registry.use(request.name) as model:
            model.validate_classification()
            probabilities = model.classify(model.load_images(sources, headers))
        respond(resp, schemas.Probabilities(probabilities, elapsed_ms(started)))


class ModelInfo:
    """GET /model_embedding_size and /model_classification_labels: read from the manifest, so
    answering never loads the model."""

    def __init__(self, repository: Repository, limits: Limits) -> None:
        self.repository = repository
        self.limits = limits

    def _entry(self, req: falcon.Request) -> Entry:
        name = model_in_query(req, self.limits)
        return self.repository.find(name)

    def on_get_embedding_size(self, req: falcon.Request, resp: falcon.Response) -> None:
        manifest = self._entry(req).manifest
        if manifest.task != "embedding":
            raise falcon.HTTPBadRequest(
                description=f"model {manifest.name!r} is a classifier; it has no embedding size"
            )
        tower = manifest.towers.get("text") or manifest.towers["image"]
        respond(resp, schemas.EmbeddingSize(tower.dim))

    def on_get_labels(self, req: falcon.Request, resp: falcon.Response) -> None:
        entry = self._entry(req)
        if entry.manifest.classifier is None:
            raise falcon.HTTPBadRequest(
                description=f"model {entry.name!r} has no class labels; build a CLIP model with "
                "ingrain-build SOURCE --labels FILE, or use a timm classifier"
            )
        respond(resp, schemas.Labels(read_labels(entry.directory, entry.manifest.classifier)))

    def on_get_info(self, req: falcon.Request, resp: falcon.Response) -> None:
        """What a client needs to call the model: towers, sizes, prompts, precisions."""
        manifest = self._entry(req).manifest
        text = manifest.towers.get("text")
        prompts = manifest.prompts
        towers = {
            key: schemas.TowerInfo(tower.dim, tower.quantization is not None)
            for key, tower in manifest.towers.items()
        }
        info = schemas.ModelInfo(
            name=manifest.name,
            library=manifest.library,
            task=manifest.task,
            towers=towers,
            max_length=manifest.tokenizer.max_length if manifest.tokenizer else None,
            prompts=prompts.prompts if prompts else {},
            default_prompt_name=prompts.default if prompts else None,
            pooling_includes_prompt=text is None
            or POOLING_MASK not in [tensor.name for tensor in text.inputs],
        )
        respond(resp, info)


def model_in_query(req: falcon.Request, limits: Limits) -> str:
    """The `name` query parameter of the GET routes about one model (names hold '/')."""
    name = req.get_param("name")
    if name is None:
        raise params.field_error("name", '"name" is required: the model, as ?name=')
    req.context.model = params.check_name(name, limits)
    return name
