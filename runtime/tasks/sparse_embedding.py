"""Sparse (SPLADE) embedding: texts (or token ids) -> token rows -> the text tower's
vocabulary-sized output -> each text's non-zero entries, pruned to the largest `top_k`.

An inference-free SPLADE model's query side is a lookup instead of the tower (QueryLookup):
the request's `side` ("query" or "document"; None: the model's default side) picks it, with
the prompts SparseEncoder.encode_query / encode_document use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from runtime.models import Model
from runtime.sparse import SPARSE_TASK, QueryLookup, SparseVector, sparsify, task_options
from runtime.tasks.capabilities import require, wrong_model
from runtime.tasks.text_inputs import TextInput, token_rows
from runtime.text import TextOptions, TokenRow


@dataclass(frozen=True)
class SparseEmbeddingOptions:
    top_k: int | None = None  # keep each text's largest entries only
    text: TextOptions = field(default_factory=TextOptions)
    side: str | None = None  # "query" or "document"; None: the model's default side


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
        options = options or SparseEmbeddingOptions()
        self.options = replace(options, text=task_options(model, options.text, options.side))
        spec = model.manifest.sparse_query
        side = options.side or (spec.default_task if spec is not None else None)
        # Models with one side serve every task with it, as sentence-transformers does.
        self.lookup: QueryLookup | None = model.sparse_query if side == "query" else None

    def prepare(self, inputs: Sequence[TextInput]) -> list[TokenRow] | list[list[int]]:
        if self.lookup is not None:
            prompt = self.encoder.resolve_prompt(self.options.text)
            return self.lookup.token_ids(list(inputs), self.options.text, prompt)
        return token_rows(self.encoder, inputs, self.options.text)

    def run(self, rows: list[TokenRow] | list[list[int]]) -> list[SparseVector]:
        if self.lookup is not None:
            return self.lookup.embed(rows, self.options.top_k)
        return [sparsify(row, self.options.top_k) for row in self.encoder.embed(rows)]


def embed_sparse(
    model: Model, inputs: Sequence[TextInput], options: SparseEmbeddingOptions | None = None
) -> list[SparseVector]:
    """One sparse vector per text (or row of token ids), in input order."""
    task = SparseEmbedding(model, options)
    return task.run(task.prepare(inputs))
