"""Route handlers: parse the request, call the runtime, shape the answer. Nothing else."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import partial
from typing import Any

import falcon
import numpy as np
import orjson

from api import params
from api.auth import Access, request_port
from api.settings import Limits
from api.sparse_output import sparse_output
from runtime.classifier import read_labels
from runtime.models import Model
from runtime.quantize import output_ranges, quantize
from runtime.registry import ModelRegistry
from runtime.repository import Entry, Repository
from runtime.sparse import SPARSE_TASK
from runtime.text import POOLING_MASK


def respond(resp: falcon.Response, payload: Any) -> None:
    """JSON out (an object, or a list as TEI's answers are); orjson writes numpy float32
    arrays directly."""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


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
        respond(resp, {"message": f"The {server} server is running."})

    on_head = on_get


class _ModelRoute:
    def __init__(self, registry: ModelRegistry, limits: Limits) -> None:
        self.registry = registry
        self.limits = limits

    def _request(self, req: falcon.Request) -> tuple[dict[str, Any], str]:
        body = params.read_json_object(req, self.limits)
        name = params.model_name(body, self.limits)
        req.context.model = name
        return body, name


class _Output:
    """One tower's post-processing and output precision, checked before any work is done."""

    def __init__(self, model: Model, tower: str, body: dict[str, Any]) -> None:
        self.normalize, self.n_dims = params.normalize(body), params.n_dims(body)
        self.precision = params.precision(body)
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
        body, name = self._request(req)
        texts = params.texts(body, self.limits)
        options = params.text_options(body, self.limits)
        req.context.items = len(texts)
        with self.registry.use(name) as model:
            if model.manifest.task == SPARSE_TASK:
                answer = {"sparse": sparse_output(model, model.tokenize(texts, options), body)}
            else:
                output = _Output(model, "text", body)
                rows = model.tokenize(texts, options)
                answer = {"embeddings": output.run(model.embed_tokens, rows)}
        respond(resp, {**answer, "processingTimeMs": elapsed_ms(started)})


class EmbedImage(_ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body, name = self._request(req)
        sources = params.images(body, self.limits)
        headers = params.download_headers(body)
        req.context.items = len(sources)
        with self.registry.use(name) as model:
            output = _Output(model, "image", body)
            embeddings = output.run(model.embed_images, model.load_images(sources, headers))
        respond(resp, {"embeddings": embeddings, "processingTimeMs": elapsed_ms(started)})


class Embed(_ModelRoute):
    """Text and/or images in one request; the two towers run at the same time."""

    def __init__(self, registry: ModelRegistry, limits: Limits) -> None:
        super().__init__(registry, limits)
        self._towers = ThreadPoolExecutor(8, thread_name_prefix="embed")

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body, name = self._request(req)
        texts = params.texts(body, self.limits, required=False)
        sources = params.images(body, self.limits, required=False)
        if texts is None and sources is None:
            raise falcon.HTTPBadRequest(description='send "text", "image" or both')
        headers = params.download_headers(body)
        options = params.text_options(body, self.limits)
        req.context.items = len(texts or []) + len(sources or [])
        with self.registry.use(name) as model:
            jobs = {}
            if texts is not None:
                output, rows = _Output(model, "text", body), model.tokenize(texts, options)
                jobs["textEmbeddings"] = partial(output.run, model.embed_tokens, rows)
            if sources is not None:
                output = _Output(model, "image", body)
                # Every image is fetched and decoded before any tower runs: a bad one stops all.
                pixels = model.load_images(sources, headers)
                jobs["imageEmbeddings"] = partial(output.run, model.embed_images, pixels)
            # In this request's context: the batcher asks it whether the client has gone.
            running = {
                key: self._towers.submit(copy_context().run, job) for key, job in jobs.items()
            }
            answer = {key: job.result() for key, job in running.items()}
        respond(resp, {**answer, "processingTimeMs": elapsed_ms(started)})


class ClassifyImage(_ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body, name = self._request(req)
        sources = params.images(body, self.limits)
        headers = params.download_headers(body)
        req.context.items = len(sources)
        with self.registry.use(name) as model:
            model.validate_classification()
            probabilities = model.classify(model.load_images(sources, headers))
        respond(resp, {"probabilities": probabilities, "processingTimeMs": elapsed_ms(started)})


class ModelInfo:
    """GET /model_embedding_size and /model_classification_labels: read from the manifest, so
    answering never loads the model."""

    def __init__(self, repository: Repository, limits: Limits) -> None:
        self.repository = repository
        self.limits = limits

    def _entry(self, req: falcon.Request) -> Entry:
        name = params.model_name({"name": req.get_param("name")}, self.limits)
        req.context.model = name
        return self.repository.find(name)

    def on_get_embedding_size(self, req: falcon.Request, resp: falcon.Response) -> None:
        manifest = self._entry(req).manifest
        if manifest.task != "embedding":
            raise falcon.HTTPBadRequest(
                description=f"model {manifest.name!r} is a {manifest.task} model; it has no "
                "(dense) embedding size"
            )
        tower = manifest.towers.get("text") or manifest.towers["image"]
        respond(resp, {"embeddingSize": tower.dim})

    def on_get_labels(self, req: falcon.Request, resp: falcon.Response) -> None:
        entry = self._entry(req)
        if entry.manifest.classifier is None:
            raise falcon.HTTPBadRequest(
                description=f"model {entry.name!r} has no class labels; build a CLIP model with "
                "ingrain-build SOURCE --labels FILE, or use a timm classifier"
            )
        respond(resp, {"labels": read_labels(entry.directory, entry.manifest.classifier)})

    def on_get_info(self, req: falcon.Request, resp: falcon.Response) -> None:
        """What a client needs to call the model: towers, sizes, prompts, precisions."""
        manifest = self._entry(req).manifest
        text = manifest.towers.get("text")
        prompts = manifest.prompts
        respond(
            resp,
            {
                "name": manifest.name,
                "library": manifest.library,
                "task": manifest.task,
                "towers": {
                    key: {"embeddingSize": tower.dim, "calibrated": tower.quantization is not None}
                    for key, tower in manifest.towers.items()
                },
                "maxLength": manifest.tokenizer.max_length if manifest.tokenizer else None,
                "prompts": prompts.prompts if prompts else {},
                "defaultPromptName": prompts.default if prompts else None,
                "poolingIncludesPrompt": text is None
                or POOLING_MASK not in [tensor.name for tensor in text.inputs],
            },
        )
