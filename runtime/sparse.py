"""Sparse (SPLADE) embeddings: the text tower's vocabulary-sized output as the indices and values
of its non-zero entries, optionally pruned to the largest `top_k`.

Inference-free SPLADE models (a sentence-transformers Router) have a second side for queries:
a lookup of a weight per vocabulary token (QueryLookup), which runs on the request thread with
no tower. A request's `task` ("query" or "document") picks the side, with the prompts
SparseEncoder.encode_query / encode_document use; without one, the model's default side serves
it, as SparseEncoder.encode does.
"""

from __future__ import annotations

from collections.abc import Callable
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
    from runtime.text import TokenRow

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


def embed_sparse(model: Model, rows: list[TokenRow], top_k: int | None) -> list[SparseVector]:
    if model.manifest.task != SPARSE_TASK:
        raise InputError(
            f"model {model.name!r} is not a sparse embedding model; build a sentence-transformers "
            "SparseEncoder (SPLADE) with ingrain-build for sparse embeddings"
        )
    assert model.text is not None
    return [sparsify(row, top_k) for row in model.text.embed(rows)]


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


def embed_sparse_side(
    model: Model,
    items: list[str | list[int]],
    options: TextOptions,
    task: str | None,
    top_k: int | None,
    tower_rows: Callable[[TextOptions], list[TokenRow]],
) -> list[SparseVector]:
    """Sparse embeddings from the side `task` asks for (None: the model's default side): an
    inference-free model's query lookup, or the text tower, whose rows of `items`
    `tower_rows(options)` makes. Models with one side serve every task with it, as
    sentence-transformers does."""
    options = task_options(model, options, task)
    lookup: QueryLookup | None = model.sparse_query
    spec = model.manifest.sparse_query
    if lookup is None or spec is None or (task or spec.default_task) != "query":
        return embed_sparse(model, tower_rows(options), top_k)
    assert model.text is not None
    prompt = model.text.resolve_prompt(options)
    return lookup.embed(lookup.token_ids(items, options, prompt), top_k)
