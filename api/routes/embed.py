"""POST /embed_text, /embed_image and /embed (and /infer): ingrain's embedding routes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import partial
from typing import Any

import falcon

from api.routes import params, schemas
from api.routes.common import ModelRoute, elapsed_ms, respond
from api.routes.tei_types import speaks_tei
from api.settings import Limits
from runtime.models import Model
from runtime.registry import ModelRegistry
from runtime.tasks.capabilities import SPARSE_EMBEDDING, tasks_of
from runtime.tasks.embedding import EmbeddingOptions
from runtime.tasks.image_embedding import ImageEmbedding, embed_images
from runtime.tasks.sparse_embedding import SparseEmbeddingOptions, embed_sparse
from runtime.tasks.text_embedding import TextEmbedding, TextEmbeddingOptions, embed_texts
from runtime.text import TextOptions


def _output(request: Any) -> dict[str, Any]:
    """A request's dense output options (runtime.tasks.embedding.EmbeddingOptions)."""
    return {
        "normalize": request.normalize,
        "n_dims": request.n_dims,
        "precision": request.precision,
    }


class EmbedText(ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.EmbedTextRequest)
        texts = params.check_texts("text", request.text, self.limits.max_items, self.limits)
        text = params.text_options(request, self.limits)
        req.context.items = len(texts)
        with self.registry.use(request.name) as model:
            if SPARSE_EMBEDDING in tasks_of(model):
                answer = {"sparse": _sparse(model, texts, request, text)}
            else:
                options = TextEmbeddingOptions(**_output(request), text=text)
                answer = {"embeddings": embed_texts(model, texts, options)}
        respond(resp, schemas.Embeddings(elapsed_ms(started), **answer))


def _sparse(
    model: Model, texts: list[str], request: schemas.EmbedTextRequest, text: TextOptions
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
    vectors = embed_sparse(model, texts, SparseEmbeddingOptions(request.top_k, text, request.task))
    return [
        schemas.SparseEmbedding(vector.indices.tolist(), vector.values.tolist())
        for vector in vectors
    ]


class EmbedImage(ModelRoute):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.EmbedImageRequest)
        sources, headers = params.request_images(req, request, self.limits)
        with self.registry.use(request.name) as model:
            options = EmbeddingOptions(**_output(request))
            embeddings = embed_images(model, sources, options, headers)
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
        texts = sources = None
        if request.text is not None:
            texts = params.check_texts("text", request.text, limit, self.limits)
        if request.image is not None:
            sources, headers = params.check_images(
                "image", request.image, request.image_download_headers, limit
            )
        text = params.text_options(request, self.limits)
        req.context.items = len(texts or []) + len(sources or [])
        with self.registry.use(request.name) as model:
            # Both towers' checks before any work.
            text_task = image_task = None
            if texts is not None:
                text_task = TextEmbedding(
                    model, TextEmbeddingOptions(**_output(request), text=text)
                )
            if sources is not None:
                image_task = ImageEmbedding(model, EmbeddingOptions(**_output(request)))
            jobs = {}
            if text_task is not None:
                jobs["text_embeddings"] = partial(text_task.run, text_task.prepare(texts))
            if image_task is not None:
                # Every image is fetched and decoded before any tower runs: a bad one stops all.
                pixels = image_task.prepare(sources, headers)
                jobs["image_embeddings"] = partial(image_task.run, pixels)
            # In this request's context: the batcher asks it whether the client has gone.
            running = {
                key: self._towers.submit(copy_context().run, job) for key, job in jobs.items()
            }
            answer = {key: job.result() for key, job in running.items()}
        respond(resp, schemas.TextAndImageEmbeddings(elapsed_ms(started), **answer))
