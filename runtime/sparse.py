"""Sparse (SPLADE) embeddings: the text tower's vocabulary-sized output as the indices and values
of its non-zero entries, optionally pruned to the largest `top_k` (the task's pipeline:
runtime.tasks.sparse_embedding)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

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
