"""Text embedding: texts (or token ids) -> token rows -> the text tower -> pooled embeddings,
truncated, normalised and quantised as the options say.

    embeddings = embed_texts(model, ["a cat"], TextEmbeddingOptions(n_dims=64))

or in stages, where a caller needs the rows (their token count) or several towers at once:
`TextEmbedding(model, options)` checks, `.prepare(inputs)` tokenises, `.run(rows)` embeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.models import Model
from runtime.tasks.capabilities import dense_embedder
from runtime.tasks.embedding import DenseOutput, EmbeddingOptions
from runtime.tasks.text_inputs import TextInput, token_rows
from runtime.text import TextOptions, TokenRow


@dataclass(frozen=True)
class TextEmbeddingOptions(EmbeddingOptions):
    text: TextOptions = field(default_factory=TextOptions)  # prompt and truncation


class TextEmbedding:
    def __init__(self, model: Model, options: TextEmbeddingOptions | None = None) -> None:
        self.encoder = dense_embedder(model, model.text, "embed text")
        self.options = options = options or TextEmbeddingOptions()
        self.output = DenseOutput(self.encoder.tower.spec, options)

    def prepare(self, inputs: Sequence[TextInput]) -> list[TokenRow]:
        return token_rows(self.encoder, inputs, self.options.text)

    def run(self, rows: list[TokenRow]) -> np.ndarray:
        return self.output(self.encoder.embed(rows))


def embed_texts(
    model: Model,
    inputs: Sequence[TextInput],
    options: TextEmbeddingOptions | None = None,
) -> np.ndarray:
    """One embedding per text (or row of token ids), in input order."""
    task = TextEmbedding(model, options)
    return task.run(task.prepare(inputs))


def similarities(
    model: Model, source: str, others: list[str], text: TextOptions | None = None
) -> np.ndarray:
    """The cosine similarity of `source` with each of `others` (sentence similarity)."""
    embeddings = embed_texts(
        model, [source, *others], TextEmbeddingOptions(text=text or TextOptions())
    )
    return embeddings[1:] @ embeddings[0]
