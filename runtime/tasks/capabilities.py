"""What a model can be asked to do, and the checks every task makes before any work: a request
that the model cannot serve fails at once, with a message about the model and its inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from runtime.errors import InputError, WrongModel
from runtime.sparse import SPARSE_TASK

if TYPE_CHECKING:
    from runtime.models import Model
    from runtime.pairs import PairEncoder

# The tasks (one module each in runtime.tasks).
TEXT_EMBEDDING = "text-embedding"
IMAGE_EMBEDDING = "image-embedding"
SPARSE_EMBEDDING = "sparse-embedding"
RERANK = "rerank"
TEXT_CLASSIFICATION = "text-classification"
IMAGE_CLASSIFICATION = "image-classification"

# The manifest's `task`, in words.
_KINDS = {
    "embedding": "an embedding model",
    SPARSE_TASK: "a sparse (SPLADE) embedding model",
    "rerank": "a reranker (cross-encoder)",
    "text-classification": "a text classifier",
    "classification": "an image classifier",
}

Encoder = TypeVar("Encoder")


def tasks_of(model: Model) -> tuple[str, ...]:
    """The tasks `model` serves (ranking by cosine and token embeddings aside: every embedding
    model ranks, and those built for it give token embeddings)."""
    task = model.manifest.task
    if model.pair is not None:
        return (RERANK,) if task == "rerank" else (TEXT_CLASSIFICATION,)
    if task == SPARSE_TASK:
        return (SPARSE_EMBEDDING,)
    tasks = []
    if task == "embedding":
        tasks += [TEXT_EMBEDDING] if model.text is not None else []
        tasks += [IMAGE_EMBEDDING] if model.image is not None else []
    if model.image is not None and model.classifier is not None:
        tasks.append(IMAGE_CLASSIFICATION)
    return tuple(tasks)


def kind(model: Model) -> str:
    """What the model is, in words: "a reranker (cross-encoder)"."""
    return _KINDS.get(model.manifest.task, f"a {model.manifest.task} model")


def wrong_model(model: Model, needed: str, advice: str = "") -> WrongModel:
    """The error for a model of another kind than the task needs ("an embedding model")."""
    message = f"model {model.name!r} is {kind(model)}, not {needed}"
    return WrongModel(message + (f" ({advice})" if advice else ""), tasks_of(model))


def require(model: Model, encoder: Encoder | None, action: str) -> Encoder:
    """The model's tower for `action` ("embed text"), or an error saying what it takes."""
    if encoder is None:
        raise InputError(f"model {model.name!r} cannot {action}: it takes {modalities(model)} only")
    return encoder


def modalities(model: Model) -> str:
    encoders = (("text", model.text or model.pair), ("images", model.image))
    return " and ".join(kind for kind, encoder in encoders if encoder)


def dense_embedder(model: Model, encoder: Encoder | None, action: str) -> Encoder:
    """`encoder`, where the model gives dense embeddings from it (`action`: "embed text")."""
    task = model.manifest.task
    if task == SPARSE_TASK and encoder is not None:
        raise wrong_model(model, "a dense embedding model")
    if task != "embedding" and (encoder is not None or model.pair is not None):
        raise wrong_model(model, "an embedding model")
    return require(model, encoder, action)


def pair_encoder(model: Model, direction: str | None) -> PairEncoder:
    """The model's pair tower, where it can truncate on the side asked (None: its own side)."""
    assert model.pair is not None
    side = model.pair.tokenizer.spec.truncation_side
    if direction is not None and direction.lower() != side:
        raise InputError(
            f"this model truncates pairs on the {side}; truncation direction {direction!r} is "
            "not supported for it"
        )
    return model.pair
