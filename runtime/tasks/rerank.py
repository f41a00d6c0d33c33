"""Reranking: a query against texts (or images), one score each, sorted best first.

Cross-encoders score each (query, text) pair: the first logit, through the model's activation
unless `raw_scores`. Embedding models score by cosine: the query's embedding against each text's
or image's (CLIP ranks images against a text this way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.classifier import activate
from runtime.errors import InputError
from runtime.models import Model
from runtime.pairs import PairEncoder
from runtime.tasks.capabilities import pair_encoder, wrong_model
from runtime.tasks.image_embedding import ImageEmbedding
from runtime.tasks.text_embedding import TextEmbedding, TextEmbeddingOptions
from runtime.tasks.text_inputs import tokens_read
from runtime.text import TextOptions


@dataclass(frozen=True)
class RerankOptions:
    top_n: int | None = None  # how many results, best first (None: all)
    raw_scores: bool = False  # cross-encoders: logits instead of the model's activation
    truncate: bool = True  # cross-encoders: false refuses a pair past the maximum length
    direction: str | None = None  # the side pairs are cut on (None: the tokenizer's own)


@dataclass(frozen=True)
class Ranking:
    scores: np.ndarray  # one per text (or image), in input order
    order: list[int]  # indices by score, best first, cut to top_n
    tokens: int  # the tokens the model read (what Jina's and Cohere's APIs report)


def ranked(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Indices by score, highest first (ties keep input order), cut to `top_n`."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:top_n]]


class Rerank:
    """`images`: whether the request ranks images instead of texts."""

    def __init__(self, model: Model, options: RerankOptions | None = None, images: bool = False):
        self.options = options = options or RerankOptions()
        self.pair: PairEncoder | None = None
        self.text: TextEmbedding | None = None
        self.image: ImageEmbedding | None = None
        if model.pair is not None:
            if model.manifest.task != "rerank":
                raise wrong_model(model, "a reranker")
            if images:
                raise InputError(f"model {model.name!r} ranks texts, not images")
            self.pair = pair_encoder(model, options.direction)
            return
        if model.manifest.task == "classification":
            raise wrong_model(model, "a reranker (cross-encoder) or an embedding model")
        if not options.truncate:
            raise InputError(
                '"truncate": false is for cross-encoders; embedding models always read each '
                "text's first tokens"
            )
        text = TextOptions(direction=options.direction)
        self.text = TextEmbedding(model, TextEmbeddingOptions(text=text))
        self.image = ImageEmbedding(model) if images else None

    def run(
        self,
        query: str,
        texts: list[str] | None = None,
        images: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Ranking:
        """`texts`, or `images` (with `headers` for their downloads), ranked against `query`."""
        scores, tokens = self._scores(query, texts, images, headers)
        return Ranking(scores, ranked(scores, self.options.top_n), tokens)

    def _scores(
        self,
        query: str,
        texts: list[str] | None,
        images: list[str] | None,
        headers: dict[str, str] | None,
    ) -> tuple[np.ndarray, int]:
        if self.pair is not None:
            assert texts is not None
            logits, tokens = self.pair.query_logits(query, texts, self.options.truncate)
            raw = self.options.raw_scores
            return (logits if raw else activate(logits, self.pair.activation))[:, 0], tokens
        assert self.text is not None
        # Every image is fetched and decoded before any tower runs: a bad one stops all.
        pixels = self.image.prepare(images or [], headers) if self.image is not None else None
        rows = self.text.prepare([query, *(texts or [])])
        embeddings = self.text.run(rows)
        if pixels is None:
            return embeddings[1:] @ embeddings[0], tokens_read(rows)
        assert self.image is not None
        return self.image.run(pixels) @ embeddings[0], tokens_read(rows)


def rerank(
    model: Model,
    query: str,
    texts: list[str] | None = None,
    options: RerankOptions | None = None,
    images: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> Ranking:
    """`texts` (or `images`) ranked against `query` by `model`."""
    return Rerank(model, options, images is not None).run(query, texts, images, headers)
