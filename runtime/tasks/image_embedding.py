"""Image embedding: image sources (URLs, base64, data URIs) -> fetched, decoded and resized
pixels -> the image tower -> embeddings, truncated, normalised and quantised as the options say.

In stages: `ImageEmbedding(model, options)` checks, `.prepare(sources, headers)` fetches and
decodes every image (the first bad one fails the request before any tower runs), `.run(pixels)`
embeds.
"""

from __future__ import annotations

import numpy as np

from runtime.models import Model
from runtime.tasks.capabilities import dense_embedder
from runtime.tasks.embedding import DenseOutput, EmbeddingOptions


class ImageEmbedding:
    def __init__(self, model: Model, options: EmbeddingOptions | None = None) -> None:
        self.encoder = dense_embedder(model, model.image, "embed images")
        self.output = DenseOutput(self.encoder.tower.spec, options or EmbeddingOptions())

    def prepare(self, sources: list[str], headers: dict[str, str] | None = None) -> np.ndarray:
        return self.encoder.load(sources, headers or {})

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.output(self.encoder.embed(pixels))


def embed_images(
    model: Model,
    sources: list[str],
    options: EmbeddingOptions | None = None,
    headers: dict[str, str] | None = None,
) -> np.ndarray:
    """One embedding per image, in input order; `headers` go with each download."""
    task = ImageEmbedding(model, options)
    return task.run(task.prepare(sources, headers))
