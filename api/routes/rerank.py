"""POST /rerank, and /v1/rerank and /v2/rerank (the Cohere / Jina shape)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import falcon

from api.routes import params, schemas
from api.routes.common import ModelRoute, elapsed_ms, respond
from api.routes.tei_types import speaks_tei
from api.settings import Limits
from runtime.registry import ModelRegistry
from runtime.tasks.rerank import RerankOptions, rerank


def _texts(field: str, value: list[str], query: str, limits: Limits) -> list[str]:
    """Texts to rank, within the limits of documents and characters (theirs and the query's)."""
    texts = params.check_items(field, value, limits.max_documents)
    params.check_chars(field, texts, limits.max_text_chars)
    total = len(query) + sum(map(len, texts))
    if total > limits.max_rerank_chars:
        raise params.field_error(
            field,
            f"the query and texts hold {total} characters; the limit is "
            f"{limits.max_rerank_chars} per request, so send fewer or shorter texts",
            falcon.HTTPContentTooLarge,
        )
    return texts


def _query(query: str, limits: Limits) -> str:
    params.check_length("query", query, limits.max_text_chars)
    return query


class Rerank(ModelRoute):
    """`texts` against `query` with a cross-encoder or an embedding model, or `images` against
    it with a CLIP model. A Text Embeddings Inference body goes to TEI's route."""

    def __init__(self, registry: ModelRegistry, limits: Limits, tei: Any) -> None:
        super().__init__(registry, limits)
        self.tei = tei

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = params.read_json_object(req, self.limits)
        if speaks_tei(body, "query", "texts"):
            self.tei.on_post(req, resp)
        else:
            self._rerank(req, resp)

    def _rerank(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        request = self._request(req, schemas.RerankRequest)
        query = _query(request.query, self.limits)
        texts = images = None
        if request.images is not None and request.texts is not None:
            raise falcon.HTTPBadRequest(description='send "texts" or "images" to rank, not both')
        if request.images is not None:
            images = params.check_items("images", request.images, self.limits.max_items)
        elif request.texts is not None:
            texts = _texts("texts", request.texts, query, self.limits)
        else:
            raise params.field_error(
                "texts", '"texts" is required: a non-empty list of strings (or "images")'
            )
        headers = params.download_headers(request.image_download_headers)
        req.context.items = len(texts or images or [])
        options = RerankOptions(request.top_n, request.raw_scores, request.truncate)
        with self.registry.use(request.name) as model:
            ranking = rerank(model, query, texts, options, images, headers)
        results = [
            schemas.Ranked(
                index,
                float(ranking.scores[index]),
                texts[index] if request.return_text and texts is not None else None,
            )
            for index in ranking.order
        ]
        respond(resp, schemas.Ranking(results, elapsed_ms(started)))


class CohereRerank(ModelRoute):
    """The request and answer shape of Cohere's and Jina's rerank APIs, which LangChain's and
    LlamaIndex's rerankers (and the cohere SDK) send; `model` names the model."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._request(req, schemas.CohereRerankRequest, "model")
        query = _query(request.query, self.limits)
        given = [item if isinstance(item, str) else item.text for item in request.documents]
        documents = _texts("documents", given, query, self.limits)
        req.context.items = len(documents)
        with self.registry.use(request.model) as model:
            ranking = rerank(model, query, documents, RerankOptions(top_n=request.top_n))
        tokens = ranking.tokens
        results = [
            schemas.CohereRanked(
                index,
                float(ranking.scores[index]),
                schemas.Document(documents[index]) if request.return_documents else None,
            )
            for index in ranking.order
        ]
        meta = schemas.CohereMeta(schemas.CohereBilled(1), schemas.CohereTokens(tokens, 0))
        usage = schemas.CohereUsage(total_tokens=tokens, documents=len(documents))
        respond(resp, schemas.CohereRanking(str(uuid.uuid4()), results, request.model, usage, meta))
