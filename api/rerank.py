"""POST /rerank, /v1/rerank and /v2/rerank (the Cohere / Jina shape) and /classify_text."""

from __future__ import annotations

import time
import uuid
from typing import Any

import falcon
import numpy as np

from api import params
from api.resources import _ModelRoute, elapsed_ms, respond
from api.settings import Limits
from runtime.ranking import classify_texts, relevance


def _flag(body: dict[str, Any], camel: str, snake: str, default: bool) -> bool:
    value = params.get(body, camel, snake)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise falcon.HTTPBadRequest(description=f'"{snake}" must be true or false')
    return value


def _count(body: dict[str, Any], camel: str, snake: str) -> int | None:
    """An optional whole number of at least 1 (a larger one than there are items means all)."""
    value = params.get(body, camel, snake)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise falcon.HTTPBadRequest(
            description=f'"{snake}" must be a whole number of at least 1, or null for all'
        )
    return value


def _query(body: dict[str, Any], limits: Limits) -> str:
    query = body.get("query")
    if not isinstance(query, str):
        raise falcon.HTTPBadRequest(description='"query" is required: the text to rank against')
    if len(query) > limits.max_text_chars:
        raise falcon.HTTPContentTooLarge(
            description=f'"query" has {len(query)} characters; the limit is {limits.max_text_chars}'
        )
    return query


def _documents(
    body: dict[str, Any], key: str, limit: int, limits: Limits, objects: bool = False
) -> list[str]:
    """A non-empty list of strings (or, with `objects`, of {"text": string}) under `key`."""
    value = body.get(key)
    what = 'strings or {"text": string} objects' if objects else "strings"
    if not isinstance(value, list) or not value:
        raise falcon.HTTPBadRequest(description=f'"{key}" is required: a non-empty list of {what}')
    if len(value) > limit:
        raise falcon.HTTPContentTooLarge(
            description=f'"{key}" has {len(value)} items; the limit is {limit} per request, so '
            "split it into several requests"
        )
    items = []
    for index, item in enumerate(value):
        if objects and isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            raise falcon.HTTPBadRequest(description=f'"{key}"[{index}] must be one of {what}')
        if len(item) > limits.max_text_chars:
            raise falcon.HTTPContentTooLarge(
                description=f'"{key}"[{index}] has {len(item)} characters; the limit is '
                f"{limits.max_text_chars}"
            )
        items.append(item)
    return items


def _check_total(query: str, texts: list[str], limits: Limits) -> None:
    total = len(query) + sum(map(len, texts))
    if total > limits.max_rerank_chars:
        raise falcon.HTTPContentTooLarge(
            description=f"the query and texts hold {total} characters; the limit is "
            f"{limits.max_rerank_chars} per request, so send fewer or shorter texts"
        )


def ranked(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Indices by score, highest first (ties keep input order), cut to `top_n`."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:top_n]]


class Rerank(_ModelRoute):
    """`texts` against `query` with a cross-encoder or an embedding model, or `images` against
    it with a CLIP model."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body, name = self._request(req)
        query = _query(body, self.limits)
        texts = images = None
        if body.get("images") is not None and body.get("texts") is not None:
            raise falcon.HTTPBadRequest(description='send "texts" or "images" to rank, not both')
        if body.get("images") is not None:
            images = _documents(body, "images", self.limits.max_items, self.limits)
        else:
            texts = _documents(body, "texts", self.limits.max_documents, self.limits)
            _check_total(query, texts, self.limits)
        top_n = _count(body, "topN", "top_n")
        return_text = _flag(body, "returnText", "return_text", False)
        raw = _flag(body, "rawScores", "raw_scores", False)
        truncate = _flag(body, "truncate", "truncate", True)
        headers = params.download_headers(body)
        req.context.items = len(texts or images or [])
        with self.registry.use(name) as model:
            pixels = model.load_images(images, headers) if images is not None else None
            scores, _ = relevance(model, query, texts, pixels, raw, truncate)
        results = []
        for index in ranked(scores, top_n):
            result: dict[str, Any] = {"index": index, "score": float(scores[index])}
            if return_text and texts is not None:
                result["text"] = texts[index]
            results.append(result)
        respond(resp, {"results": results, "processingTimeMs": elapsed_ms(started)})


class CohereRerank(_ModelRoute):
    """The request and answer shape of Cohere's and Jina's rerank APIs, which LangChain's and
    LlamaIndex's rerankers (and the cohere SDK) send; `model` names the model."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = params.read_json_object(req, self.limits)
        if body.get("model") is None:
            raise falcon.HTTPBadRequest(description='"model" is required: the model to rank with')
        name = params.model_name({"name": body["model"]}, self.limits)
        req.context.model = name
        query = _query(body, self.limits)
        documents = _documents(body, "documents", self.limits.max_documents, self.limits, True)
        _check_total(query, documents, self.limits)
        top_n = _count(body, "topN", "top_n")
        return_documents = _flag(body, "returnDocuments", "return_documents", False)
        req.context.items = len(documents)
        with self.registry.use(name) as model:
            scores, tokens = relevance(model, query, documents, None)
        results = []
        for index in ranked(scores, top_n):
            result: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
            if return_documents:
                result["document"] = {"text": documents[index]}
            results.append(result)
        respond(
            resp,
            {
                "id": str(uuid.uuid4()),
                "results": results,
                "model": name,
                # Jina's usage, and Cohere's (meta.tokens) as its SDKs read it.
                "usage": {"total_tokens": tokens, "documents": len(documents)},
                "meta": {
                    "billed_units": {"search_units": 1},
                    "tokens": {"input_tokens": tokens, "output_tokens": 0},
                },
            },
        )


class ClassifyText(_ModelRoute):
    """Class probabilities per text, and the top_k labels by probability."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        body, name = self._request(req)
        texts = params.texts(body, self.limits)
        top_k = _count(body, "topK", "top_k")
        req.context.items = len(texts)
        with self.registry.use(name) as model:
            probabilities = classify_texts(model, texts)
            labels = model.classifier.labels
        top = [
            [{"label": labels[i], "score": float(row[i])} for i in ranked(row, top_k)]
            for row in probabilities
        ]
        answer = {"probabilities": probabilities, "labels": top}
        respond(resp, {**answer, "processingTimeMs": elapsed_ms(started)})
