"""The runtime's task errors (runtime.errors) in the words of ingrain's routes: a model of
another kind gets the routes that serve it named, a dimension out of range the field `nDims`,
an unknown prompt name the route that lists the model's prompts.
The runtime speaks of models and inputs only; which route to call is the API's to say."""

from __future__ import annotations

from runtime.errors import DimensionsOutOfRange, InputError, UnknownPrompt, WrongModel
from runtime.tasks.capabilities import (
    IMAGE_CLASSIFICATION,
    IMAGE_EMBEDDING,
    RERANK,
    SPARSE_EMBEDDING,
    TEXT_CLASSIFICATION,
    TEXT_EMBEDDING,
)

# The ingrain route of each task (runtime.tasks).
ROUTES = {
    TEXT_EMBEDDING: "/embed_text",
    IMAGE_EMBEDDING: "/embed_image",
    SPARSE_EMBEDDING: "/embed_text or /embed_sparse",
    RERANK: "/rerank",
    TEXT_CLASSIFICATION: "/classify_text",
    IMAGE_CLASSIFICATION: "/classify_image",
}


def describe(error: InputError) -> str:
    """The message of a runtime input error, with the route to use where the model serves
    another task: "model 'x' is a reranker (cross-encoder), not an embedding model; use
    /rerank"."""
    if isinstance(error, UnknownPrompt):
        return f"{error}; GET /model_info lists them"
    if isinstance(error, DimensionsOutOfRange):
        return f"nDims must be between 1 and {error.dim} (this model's dimension), or null"
    if isinstance(error, WrongModel) and error.serves:
        routes = [ROUTES[task] for task in error.serves]
        listed = ", ".join(routes[:-1]) + " or " + routes[-1] if len(routes) > 1 else routes[0]
        return f"{error}; use {listed}"
    return str(error)
