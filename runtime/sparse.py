"""Sparse (SPLADE) embeddings: the text tower's vocabulary-sized output as the indices and values
of its non-zero entries, optionally pruned to the largest `top_k`."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from runtime.errors import InputError

if TYPE_CHECKING:
    from runtime.models import Model
    from runtime.text import TokenRow

SPARSE_TASK = "sparse-embedding"


class SparseVector(NamedTuple):
    indices: np.ndarray  # vocabulary ids, ascending
    values: np.ndarray  # float32, one per index


def sparsify(row: np.ndarray, top_k: int | None = None) -> SparseVector:
    """The non-zero entries of `row` (by ascending index); with `top_k`, only the largest
    `top_k` of them (by value)."""
    indices = np.flatnonzero(row)
    if top_k is not None and len(indices) > top_k:
        largest = np.argpartition(-row[indices], top_k - 1)[:top_k]
        indices = np.sort(indices[largest])
    return SparseVector(indices, row[indices])


def embed_sparse(model: Model, rows: list[TokenRow], top_k: int | None) -> list[SparseVector]:
    if model.manifest.task != SPARSE_TASK:
        raise InputError(
            f"model {model.name!r} is not a sparse embedding model; build a sentence-transformers "
            "SparseEncoder (SPLADE) with ingrain-build for sparse embeddings"
        )
    assert model.text is not None
    return [sparsify(row, top_k) for row in model.text.embed(rows)]
