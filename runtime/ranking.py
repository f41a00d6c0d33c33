"""Relevance of texts (or images) to a query, and text classification, for every model kind
that can answer them: cross-encoders score pairs; embedding models rank by cosine."""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError
from runtime.models import Model


def relevance(
    model: Model,
    query: str,
    texts: list[str] | None,
    pixels: np.ndarray | None,
    raw: bool = False,
    truncate: bool = True,
) -> tuple[np.ndarray, int]:
    """One score per text (or image), in input order, and the tokens the model read (what
    Jina's and Cohere's rerank APIs report as usage).

    Cross-encoders: the model's score of each (query, text) pair (its logit when `raw`).
    Embedding models: the cosine between the query's embedding and each text's or image's.
    """
    if model.pair is not None:
        if model.manifest.task != "rerank":
            raise InputError(
                f"model {model.name!r} is a text classifier, not a reranker; use /classify_text"
            )
        if texts is None:
            raise InputError(f'model {model.name!r} ranks texts; send "texts", not images')
        return model.pair.scores(query, texts, raw, truncate)
    if model.manifest.task == "classification":
        raise InputError(
            f"model {model.name!r} is an image classifier; /rerank needs a reranker "
            "(cross-encoder) or an embedding model"
        )
    if not truncate:
        raise InputError(
            '"truncate": false is for cross-encoders; embedding models always read each '
            "text's first tokens"
        )
    model.validate(texts=True, images=texts is None, n_dims=None)
    rows = model.tokenize([query, *(texts or [])])
    embeddings = model.embed_tokens(rows, normalize=True, n_dims=None)
    tokens = sum(len(row.ids) for row in rows)
    if texts is not None:
        return embeddings[1:] @ embeddings[0], tokens
    assert pixels is not None
    return model.embed_images(pixels, normalize=True, n_dims=None) @ embeddings[0], tokens


def classify_texts(model: Model, texts: list[str]) -> np.ndarray:
    """Class probabilities per text from a sequence classifier, as its source library gives."""
    if model.pair is None or model.classifier is None:
        hint = "/classify_image" if model.classifier is not None else "/embed_text"
        raise InputError(
            f"model {model.name!r} is not a text classifier; use {hint} with it, or build a "
            "*ForSequenceClassification model"
        )
    if model.manifest.task != "text-classification":
        raise InputError(f"model {model.name!r} is a reranker; use /rerank")
    return model.classifier.probabilities(model.pair.logits(texts, None, truncate=True))
