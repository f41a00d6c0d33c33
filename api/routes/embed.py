"""POST /embed_text, /embed_image, /embed (and /infer) and /classify_image."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import partial
from typing import Any

import falcon
import numpy as np

from api.routes import params, schemas
from api.routes.common import ModelRoute, elapsed_ms, respond
from api.routes.tei_types import speaks_tei
from api.settings import Limits
from runtime.models import Model
from runtime.quantize import output_ranges, quantize
from runtime.registry import ModelRegistry
from runtime.sparse import SPARSE_TASK, embed_sparse_side
from runtime.text import TextOptions


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


class EmbedText(ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.EmbedTextRequest)
        texts = params.check_texts("text", request.text, self.limits.max_items, self.limits)
        options = params.text_options(request, self.limits)
        req.context.items = len(texts)
        with self.registry.use(request.name) as model:
            if model.manifest.task == SPARSE_TASK:
                answer = {"sparse": _sparse(model, texts, options, request)}
            else:
                output = _Output(model, "text", request)
                rows = model.tokenize(texts, options)
                answer = {"embeddings": output.run(model.embed_tokens, rows)}
        respond(resp, schemas.Embeddings(elapsed_ms(started), **answer))


def _sparse(
    model: Model, texts: list[str], options: TextOptions, request: schemas.EmbedTextRequest
) -> list[schemas.SparseEmbedding]:
    """Each text's non-zero vocabulary entries from the side `task` asks for, pruned to the
    largest `topK` when asked."""
    dense_only = {"nDims": request.n_dims is not None, "precision": request.precision != "float32"}
    for field, given in dense_only.items():
        if given:
            raise params.field_error(
                field,
                f'"{field}" is for dense embeddings; {model.name!r} gives sparse ones (prune '
                'them with "topK")',
            )
    return [
        schemas.SparseEmbedding(vector.indices.tolist(), vector.values.tolist())
        for vector in embed_sparse_side(
            model, list(texts), options, request.task, request.top_k, partial(model.tokenize, texts)
        )
    ]


class EmbedImage(ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.EmbedImageRequest)
        sources = params.check_items("image", request.image, self.limits.max_items)
        headers = params.download_headers(request.image_download_headers)
        req.context.items = len(sources)
        with self.registry.use(request.name) as model:
            output = _Output(model, "image", request)
            embeddings = output.run(model.embed_images, model.load_images(sources, headers))
        respond(resp, schemas.Embeddings(elapsed_ms(started), embeddings))


class Embed(ModelRoute):
    """Text and/or images in one request; the two towers run at the same time. At /embed
    (`on_post_shared`) a Text Embeddings Inference body goes to TEI's route; /infer is ingrain's."""

    def __init__(self, registry: ModelRegistry, limits: Limits, tei: Any) -> None:
        super().__init__(registry, limits)
        self.tei = tei
        self._towers = ThreadPoolExecutor(8, thread_name_prefix="embed")

    def on_post_shared(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = params.read_json_object(req, self.limits)
        (self.tei if speaks_tei(body, "inputs") else self).on_post(req, resp)

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


class ClassifyImage(ModelRoute):
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
