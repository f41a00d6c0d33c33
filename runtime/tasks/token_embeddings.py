"""Token embeddings (the per-token outputs before pooling) from a model's `tokens` tower, built
with ingrain-build --token-embeddings (builder.token_embeddings): texts (or token ids) -> token
rows -> the tower -> one (tokens, hidden) array per text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.errors import InputError
from runtime.models import Model
from runtime.tasks.text_inputs import TextInput, token_rows
from runtime.text import TextOptions, TokenRow


class TokenEmbeddings:
    def __init__(self, model: Model, options: TextOptions | None = None) -> None:
        if model.tokens is None:
            raise InputError(
                f"model {model.name!r} has no token embeddings; rebuild it with ingrain-build "
                "--token-embeddings"
            )
        self.encoder = model.tokens
        self.options = options or TextOptions()

    def prepare(self, inputs: Sequence[TextInput]) -> list[TokenRow]:
        return token_rows(self.encoder, inputs, self.options)

    def run(self, rows: list[TokenRow]) -> list[np.ndarray]:
        """The tower's zero-padded, flattened rows cropped back to each row's tokens."""
        width = self.encoder.max_length
        flat = self.encoder.embed(rows)
        hidden = flat.shape[1] // width
        return [
            out.reshape(width, hidden)[: len(row.ids)] for out, row in zip(flat, rows, strict=True)
        ]


def embed_tokens(
    model: Model, inputs: Sequence[TextInput], options: TextOptions | None = None
) -> list[np.ndarray]:
    """Each text's token embeddings, in input order."""
    task = TokenEmbeddings(model, options)
    return task.run(task.prepare(inputs))
