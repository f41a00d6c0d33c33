"""Sparse (SPLADE) embeddings: the text tower's vocabulary-sized output as the indices and values
of its non-zero entries, optionally pruned to the largest `top_k`.

Inference-free SPLADE models (a sentence-transformers Router) have a second side for queries:
a lookup of a weight per vocabulary token (QueryLookup), which runs on the request thread with
no tower. A request's `task` ("query" or "document") picks the side, with the prompts
SparseEncoder.encode_query / encode_document use; without one, the model's default side serves
it, as SparseEncoder.encode does. The task's pipeline: runtime.tasks.sparse_embedding.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from runtime.errors import InputError, ModelLoadError
from runtime.preprocessing.tokenizer import TextTokenizer, open_tokenizer
from runtime.repository.manifest import SparseQuerySpec
from runtime.text import TextOptions, TextTooLong

if TYPE_CHECKING:
    from runtime.models import Model

SPARSE_TASK = "sparse-embedding"
TASKS = ("query", "document")


class SparseVector(NamedTuple):
    indices: np.ndarray  # vocabulary ids, ascending
    values: np.ndarray  # float32, one per index


def sparsify(row: np.ndarray, top_k: int | None = None) -> SparseVector:
    """The non-zero entries of `row` (by ascending index); with `top_k`, only the largest
    `top_k` of them (by value)."""
    indices = np.flatnonzero(row)
    return _largest(indices, row[indices], top_k)


def _largest(indices: np.ndarray, values: np.ndarray, top_k: int | None) -> SparseVector:
    """Entries given by ascending index; with `top_k`, the largest `top_k` of them, by index."""
    if top_k is not None and len(indices) > top_k:
        kept = np.sort(np.argpartition(-values, top_k - 1)[:top_k])
        indices, values = indices[kept], values[kept]
    return SparseVector(indices, values)


class QueryLookup:
    """Inference-free SPLADE's query side, as sentence-transformers' SparseStaticEmbedding
    computes it: each distinct token of the query (tokenized without special tokens, truncated
    to the tokenizer's maximum length) gets its vocabulary weight; tokens of weight 0 drop out."""

    def __init__(self, directory: Path, spec: SparseQuerySpec) -> None:
        self.tokenizer = open_tokenizer(TextTokenizer, directory, spec.tokenizer)
        try:
            weights = np.load(directory / spec.weights, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load {directory / spec.weights}: {error}") from error
        if weights.ndim != 1 or len(weights) < self.tokenizer.vocab_size:
            raise ModelLoadError(
                f"{directory / spec.weights} holds {weights.shape} weights; the query tokenizer "
                f"has {self.tokenizer.vocab_size} tokens"
            )
        self.weights = weights.astype(np.float32, copy=False)

    @property
    def max_length(self) -> int:
        return self.tokenizer.spec.max_length

    def token_ids(
        self, items: list[str | list[int]], options: TextOptions, prompt: str | None
    ) -> list[list[int]]:
        """Texts (after `prompt`) and token-id rows, in request order, as the ids looked up;
        truncated as `options` say (or a TextTooLong where they say not to)."""
        direction = options.direction or self.tokenizer.spec.truncation_side
        prefix = prompt or ""
        texts = [(i, prefix + item) for i, item in enumerate(items) if isinstance(item, str)]
        rows: list[list[int]] = [[] for _ in items]
        encoded = self.tokenizer.encode([text for _, text in texts], direction)
        for (index, text), (ids, count) in zip(texts, encoded, strict=True):
            if count > self.max_length and not options.truncate:
                raise TextTooLong(index, self.tokenizer.count(text), self.max_length)
            rows[index] = ids
        for index, item in enumerate(items):
            if isinstance(item, str):
                continue
            bad = next((i for i in item if not 0 <= i < len(self.weights)), None)
            if bad is not None:
                raise InputError(
                    f"input[{index}] holds token id {bad}, outside this model's vocabulary "
                    f"(0 to {len(self.weights) - 1})"
                )
            if len(item) > self.max_length and not options.truncate:
                raise TextTooLong(index, len(item), self.max_length)
            rows[index] = self.tokenizer.truncate_ids(item, direction)
        return rows

    def embed(self, rows: list[list[int]], top_k: int | None) -> list[SparseVector]:
        vectors = []
        for ids in rows:
            present = np.unique(np.asarray(ids, dtype=np.int64))
            values = self.weights[present]
            nonzero = values != 0
            vectors.append(_largest(present[nonzero], values[nonzero], top_k))
        return vectors


def open_query_lookup(directory: Path, spec: SparseQuerySpec | None) -> QueryLookup | None:
    return None if spec is None else QueryLookup(directory, spec)


def task_options(model: Model, options: TextOptions, task: str | None) -> TextOptions:
    """The prompt of SparseEncoder.encode_query / encode_document: where the request asks for
    no prompt, the model's prompt named as the task, or none (never the default prompt)."""
    if task is None or options.prompt is not None or options.prompt_name is not None:
        return options
    assert model.text is not None
    if task in model.text.prompts.prompts:
        return replace(options, prompt_name=task)
    return replace(options, prompt="")
