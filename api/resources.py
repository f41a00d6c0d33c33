"""Route handlers: parse the request, call the runtime, shape the answer. Nothing else."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import falcon
import orjson

from api import params
from api.settings import Limits
from runtime.classifier import read_labels
from runtime.registry import ModelRegistry
from runtime.repository import Entry, Repository


def respond(resp: falcon.Response, payload: dict[str, Any]) -> None:
    """JSON out; orjson writes numpy float32 arrays directly."""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


class Health:
    """One app answers both ports; the port a request came in on says which server it asks."""

    def __init__(self, model_port: int | None) -> None:
        self.model_port = model_port

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        connection = req.env.get("gunicorn.socket")
        port = connection.getsockname()[1] if connection is not None else None
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


class EmbedText(_ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body, name = self._request(req)
        texts = params.texts(body, self.limits)
        normalize, n_dims = params.normalize(body), params.n_dims(body)
        req.context.items = len(texts)
        embeddings = self.registry.get(name).embed_text(texts, normalize, n_dims)
        respond(resp, {"embeddings": embeddings, "processingTimeMs": elapsed_ms(started)})


class EmbedImage(_ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body, name = self._request(req)
        sources = params.images(body, self.limits)
        headers = params.download_headers(body)
        normalize, n_dims = params.normalize(body), params.n_dims(body)
        req.context.items = len(sources)
        model = self.registry.get(name)
        model.validate(texts=False, images=True, n_dims=n_dims)
        pixels = model.load_images(sources, headers)
        embeddings = model.embed_images(pixels, normalize, n_dims)
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
        normalize, n_dims = params.normalize(body), params.n_dims(body)
        req.context.items = len(texts or []) + len(sources or [])
        model = self.registry.get(name)
        model.validate(texts=texts is not None, images=sources is not None, n_dims=n_dims)
        # Every image is fetched and decoded before any tower runs: a bad one stops it all.
        pixels = model.load_images(sources, headers) if sources is not None else None
        jobs = {}
        if texts is not None:
            jobs["textEmbeddings"] = self._towers.submit(model.embed_text, texts, normalize, n_dims)
        if pixels is not None:
            jobs["imageEmbeddings"] = self._towers.submit(
                model.embed_images, pixels, normalize, n_dims
            )
        answer = {key: job.result() for key, job in jobs.items()}
        respond(resp, {**answer, "processingTimeMs": elapsed_ms(started)})


class ClassifyImage(_ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body, name = self._request(req)
        sources = params.images(body, self.limits)
        headers = params.download_headers(body)
        req.context.items = len(sources)
        model = self.registry.get(name)
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
                description=f"model {manifest.name!r} is a classifier; it has no embedding size"
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
