"""What can go wrong when serving, as one hierarchy. The API maps each kind to its status in
one place (api/errors.py); the runtime never speaks HTTP."""

from __future__ import annotations

from pathlib import Path


class ServingError(Exception):
    """Base of every error the runtime raises on purpose; the message says what to do."""


class InputError(ServingError, ValueError):
    """The request asks something of the model that it cannot do (a 400)."""


class WrongModel(InputError):
    """The model is of another kind than the task needs (an embedding asked of a reranker).
    `serves`: the tasks it does serve (runtime.tasks.capabilities), so that the API can name
    the routes for them."""

    def __init__(self, message: str, serves: tuple[str, ...]) -> None:
        super().__init__(message)
        self.serves = serves


class DimensionsOutOfRange(InputError):
    """A Matryoshka truncation to more dimensions than the model has, or fewer than one."""

    def __init__(self, requested: int, dim: int) -> None:
        super().__init__(
            f"the embeddings can keep between 1 and {dim} dimensions (this model's dimension), "
            f"not {requested}"
        )
        self.requested = requested
        self.dim = dim


class UnknownPrompt(InputError):
    """A prompt name the model was not built with; the API adds where its prompts are listed."""


class ModelNotFound(ServingError, LookupError):
    """No model of that name in the engine repository (a 404)."""

    def __init__(self, name: str, root: Path | None = None) -> None:
        super().__init__(name)
        self.name = name
        self.root = root


class ModelNotLoaded(ServingError, LookupError):
    """The model is in the repository but not in the server's loaded set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class ModelLoadError(ServingError, RuntimeError):
    """An engine directory that cannot be loaded; the message names the file and the cause."""


class ModelUnavailable(ServingError, RuntimeError):
    """The model is changing under the request (being unloaded, deleted or replaced): a
    transient state that a retry resolves (a 503 with Retry-After)."""


class Overloaded(ServingError, RuntimeError):
    """The tower's queue is full; the caller should retry shortly (a 503)."""


class QueueDeadline(Overloaded):
    """The request waited in the queue past the deadline and was dropped before execution."""


class ClientGone(ServingError, ConnectionError):
    """The client closed its connection before the request executed; nobody reads an answer."""
