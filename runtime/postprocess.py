"""Post-processing shared by every embedding task (runtime.tasks), defined once."""

from __future__ import annotations

import numpy as np


def finish_embeddings(embeddings: np.ndarray, normalize: bool, n_dims: int | None) -> np.ndarray:
    """Matryoshka truncation to `n_dims` first, then L2 normalisation when asked.

    A zero vector stays zero rather than becoming NaN.
    """
    if n_dims is not None:
        embeddings = embeddings[:, :n_dims]
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = embeddings / np.maximum(norms, np.finfo(np.float32).tiny)
    return embeddings


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably: the row maximum is subtracted before exponentiating."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function without overflow for large negative logits."""
    return np.exp(-np.logaddexp(0.0, -logits))
