"""The kinds of model Text Embeddings Inference knows, read from a manifest (light to import:
the CLI checks --default-model with it before the server starts)."""

from __future__ import annotations

from runtime.repository.manifest import Manifest

EMBEDDING, SPARSE, RERANK, CLASSIFIER = (
    "embedding",
    "sparse-embedding",
    "rerank",
    "text-classification",
)
KINDS = (EMBEDDING, SPARSE, RERANK, CLASSIFIER)


def kind_of(manifest: Manifest) -> str | None:
    """The TEI model type a model serves as: text embedding (dense or sparse), reranker or
    text classifier; None for image-only models."""
    if manifest.task == EMBEDDING:
        return EMBEDDING if "text" in manifest.towers else None
    return manifest.task if manifest.task in KINDS else None
