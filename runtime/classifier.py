"""Image-tower outputs -> class probabilities, as the manifest's classifier spec says."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.postprocess import finish_embeddings, sigmoid, softmax
from runtime.repository.manifest import ClassifierSpec


def read_labels(directory: Path, spec: ClassifierSpec) -> list[str]:
    """One label per non-empty line of the labels file, in class order."""
    text = (directory / spec.labels_file).read_text(encoding="utf-8")
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


class Classifier:
    def __init__(self, directory: Path, spec: ClassifierSpec) -> None:
        self.spec = spec
        self.labels = read_labels(directory, spec)
        self.class_embeddings = None
        if spec.kind == "zero_shot":
            assert spec.class_embeddings is not None
            stored = np.load(directory / spec.class_embeddings).astype(np.float32)
            self.class_embeddings = finish_embeddings(stored, normalize=True, n_dims=None)
            if len(self.class_embeddings) != len(self.labels):
                raise ValueError(
                    f"{spec.class_embeddings} has {len(stored)} rows for {len(self.labels)} labels"
                )

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        logits = outputs.astype(np.float32)
        if self.class_embeddings is not None:
            image = finish_embeddings(logits, normalize=True, n_dims=None)
            logits = self.spec.logit_scale * image @ self.class_embeddings.T
            if self.spec.logit_bias is not None:
                logits = logits + self.spec.logit_bias
        return activate(logits, self.spec.activation)


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """The source library's activation on a batch of logits (rows are items)."""
    if activation == "none":
        return logits
    return sigmoid(logits) if activation == "sigmoid" else softmax(logits)
