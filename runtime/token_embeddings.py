"""Token embeddings (the per-token outputs before pooling) from a model's `tokens` tower, built
with ingrain-build --token-embeddings (builder.token_embeddings)."""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError
from runtime.models import Model
from runtime.text import TokenRow


def token_embeddings(model: Model, rows: list[TokenRow]) -> list[np.ndarray]:
    """One (tokens, hidden) array per row: the tower's zero-padded, flattened rows cropped
    back to each row's tokens."""
    if model.tokens is None:
        raise InputError(
            f"model {model.name!r} has no token embeddings; rebuild it with ingrain-build "
            "--token-embeddings"
        )
    width = model.tokens.max_length
    flat = model.tokens.embed(rows)
    hidden = flat.shape[1] // width
    return [out.reshape(width, hidden)[: len(row.ids)] for out, row in zip(flat, rows, strict=True)]
