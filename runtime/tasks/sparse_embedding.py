"""Sparse (SPLADE) embedding: texts (or token ids) -> token rows -> the text tower's
vocabulary-sized output -> each text's non-zero entries, pruned to the largest `top_k`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.models import Model
from runtime.sparse import SPARSE_TASK, SparseVector, sparsify
from runtime.tasks.capabilities import require, wrong_model
from runtime.tasks.text_inputs import TextInput, token_rows
from runtime.text import TextOptions, TokenRow


@dataclass(frozen=True)
class SparseEmbeddingOptions:
    top_k: int | None = None  # keep each text's largest entries only
    text: TextOptions = field(default_factory=TextOptions)


class SparseEmbedding:
    def __init__(self, model: Model, options: SparseEmbeddingOptions | None = None) -> None:
        if model.manifest.task != SPARSE_TASK:
            raise wrong_model(
                model,
                "a sparse embedding model",
                "build a sentence-transformers SparseEncoder (SPLADE) with ingrain-build for "
                "sparse embeddings",
            )
        self.encoder = require(model, model.text, "embed text")
        self.options = options or SparseEmbeddingOptions()

    def prepare(self, inputs: Sequence[TextInput]) -> list[TokenRow]:
        return token_rows(self.encoder, inputs, self.options.text)

    def run(self, rows: list[TokenRow]) -> list[SparseVector]:
        return [sparsify(row, self.options.top_k) for row in self.encoder.embed(rows)]


def embed_sparse(
    model: Model, inputs: Sequence[TextInput], options: SparseEmbeddingOptions | None = None
) -> list[SparseVector]:
    """One sparse vector per text (or row of token ids), in input order."""
    task = SparseEmbedding(model, options)
    return task.run(task.prepare(inputs))
