"""The ingrain API's `sparse` output: /embed_text with a sparse (SPLADE) model answers each
text's non-zero vocabulary entries as {"indices": [...], "values": [...]}, optionally pruned to
the largest `topK` per text."""

from __future__ import annotations

from typing import Any

import falcon

from api import params
from runtime.models import Model
from runtime.sparse import embed_sparse
from runtime.text import TokenRow

# Options of dense embeddings that mean nothing for sparse ones.
DENSE_ONLY = (("nDims", "n_dims"), ("precision", None))


def sparse_output(model: Model, rows: list[TokenRow], body: dict[str, Any]) -> list[dict]:
    for camel, snake in DENSE_ONLY:
        if params.get(body, camel, snake) is not None:
            raise falcon.HTTPBadRequest(
                description=f'"{camel}" is for dense embeddings; {model.name!r} gives sparse '
                'ones (prune them with "topK")'
            )
    top_k = params.get(body, "topK", "top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise falcon.HTTPBadRequest(
            description='"topK" must be a whole number of at least 1 (the most entries per '
            "text), or null for all"
        )
    return [
        {"indices": vector.indices, "values": vector.values}
        for vector in embed_sparse(model, rows, top_k)
    ]
