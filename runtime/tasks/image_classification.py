"""Image classification (timm classifiers, and CLIP zero-shot against its labels' embeddings):
image sources -> fetched, decoded and resized pixels -> the image tower -> class probabilities.

In stages: `ImageClassification(model)` checks, `.prepare(sources, headers)` fetches and
decodes, `.run(pixels)` classifies.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError
from runtime.models import Model
from runtime.tasks.capabilities import require


class ImageClassification:
    def __init__(self, model: Model) -> None:
        if model.classifier is None:
            raise InputError(
                f"model {model.name!r} has no class labels; use a timm classifier, or build a CLIP "
                "model for zero-shot classification with: ingrain-build SOURCE --labels FILE"
            )
        self.encoder = require(model, model.image, "classify images")
        self.classifier = model.classifier
        self.labels = model.classifier.labels

    def prepare(self, sources: list[str], headers: dict[str, str] | None = None) -> np.ndarray:
        return self.encoder.load(sources, headers or {})

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities, one row per image, one column per label."""
        return self.classifier.probabilities(self.encoder.embed(pixels))


def classify_images(
    model: Model, sources: list[str], headers: dict[str, str] | None = None
) -> np.ndarray:
    """Every label's probability per image, in input order."""
    task = ImageClassification(model)
    return task.run(task.prepare(sources, headers))
