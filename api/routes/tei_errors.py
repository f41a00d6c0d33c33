"""Errors on Text Embeddings Inference requests: `{"error": "...", "error_type": "..."}` with
TEI's status for each error type (a superset of the ingrain shape, which has only `error`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import falcon

from runtime.errors import DimensionsOutOfRange, InputError, ModelUnavailable, Overloaded
from runtime.text import TextTooLong

# TEI's own paths: all of its routes but POST / (shared with the pages' GET /), /embed and
# /rerank (shared with the ingrain API, told apart by the body, which is read only once the key
# is checked). An error raised before the route runs (a missing key) is in TEI's shape on these.
TEI_PATHS = (
    "/embed_sparse",
    "/embed_all",
    "/predict",
    "/similarity",
    "/tokenize",
    "/decode",
    "/info",
    "/vertex",
)

# TEI's `impl From<&ErrorType> for StatusCode`.
STATUS = {
    "Unhealthy": 503,
    "Backend": 424,
    "Overloaded": 429,
    "Validation": 422,
    "Tokenizer": 422,
    "Empty": 400,
}


class TEIError(falcon.HTTPError):
    def __init__(
        self,
        error_type: str,
        message: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status or STATUS[error_type], description=message, headers=headers)
        self.error_type = error_type


def batch_too_large(size: int, limit: int) -> TEIError:
    """TEI's message and (documented) status for more inputs than one request may hold."""
    return TEIError(
        "Validation", f"batch size {size} > maximum allowed batch size {limit}", status=413
    )


def is_tei_request(req: falcon.Request) -> bool:
    """Whether a request is TEI's: its route says so (api.routes.tei marks it once the body
    has told), or its path and method are TEI's alone."""
    if getattr(req.context, "tei", False) or req.uri_template in TEI_PATHS:
        return True
    return req.uri_template == "/" and req.method == "POST"


def error_type(error: falcon.HTTPError) -> str:
    """The TEI error type of any HTTP error raised while serving a TEI request."""
    if isinstance(error, TEIError):
        return error.error_type
    status = error.status_code
    if status == 503:
        return "Unhealthy"
    return "Backend" if status >= 500 else "Validation"


@contextmanager
def runtime_errors() -> Iterator[None]:
    """The runtime's errors as TEI reports them: bad input 422, a full queue 429."""
    try:
        yield
    except TextTooLong as error:
        raise TEIError(
            "Validation",
            f"Input validation error: `inputs` must have less than {error.maximum} tokens. "
            f"Given: {error.tokens}",
        ) from None
    except DimensionsOutOfRange as error:
        raise TEIError(
            "Validation",
            f"`dimensions` is {error.requested}; this model's embeddings have {error.dim}",
        ) from None
    except InputError as error:
        raise TEIError("Validation", str(error)) from None
    except Overloaded as error:
        raise TEIError(
            "Overloaded", f"Model is overloaded: {error}", headers={"Retry-After": "1"}
        ) from None
    except ModelUnavailable as error:
        raise TEIError(
            "Unhealthy", f"the model is not available right now: {error}; retry shortly"
        ) from None
