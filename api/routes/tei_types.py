"""Text Embeddings Inference's request and response bodies, declared as msgspec Structs.

The shapes follow TEI's router (router/src/http/types.rs) field for field: unknown fields are
ignored as serde ignores them, and every default is TEI's. Unions TEI decodes "untagged"
(`inputs` as a string, strings, token ids or rows of them) are declared as the widest shape
msgspec can check and narrowed by the functions below, with TEI's messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from api.routes.tei_errors import TEIError

TokenId = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
TruncationDirection = Literal["Left", "left", "Right", "right"]
# What TEI calls ErrorType; its status codes come from TEI's own table (api.routes.tei_errors).
ErrorType = Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]

# `inputs` of /embed, /embed_sparse and /embed_all: a string, a list of token ids, or a list of
# strings and token-id lists.
Input = str | list[str | TokenId | list[TokenId]]


class TEIEmbedAllRequest(msgspec.Struct):
    """/embed_all's body, and the fields /embed and /embed_sparse share with it."""

    inputs: Input
    truncate: bool | None = None
    truncation_direction: TruncationDirection = "right"
    prompt_name: str | None = None


class TEIEmbedRequest(TEIEmbedAllRequest):
    normalize: bool = True
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None


class TEIEmbedSparseRequest(TEIEmbedAllRequest):
    # Not TEI's: keep only the largest top_k values of each text.
    top_k: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # Not TEI's: sentence-transformers' task, "query" (encode_query: an inference-free model's
    # lookup) or "document" (encode_document); None: the model's default side (encode).
    task: Literal["query", "document"] | None = None


class TEIRerankRequest(msgspec.Struct):
    query: str
    texts: list[str]
    truncate: bool | None = None
    truncation_direction: TruncationDirection = "right"
    raw_scores: bool = False
    return_text: bool = False


class TEIPredictRequest(msgspec.Struct):
    # A string, a pair [string, string], or a batch [[string], [string, string], ...].
    inputs: str | list[str | list[str]]
    truncate: bool | None = None
    truncation_direction: TruncationDirection = "right"
    raw_scores: bool = False


class TEISimilarityInput(msgspec.Struct):
    source_sentence: str
    sentences: list[str]


class TEISimilarityParameters(msgspec.Struct):
    truncate: bool | None = None
    truncation_direction: TruncationDirection = "right"
    prompt_name: str | None = None


class TEISimilarityRequest(msgspec.Struct):
    inputs: TEISimilarityInput
    parameters: TEISimilarityParameters | None = None


class TEITokenizeRequest(msgspec.Struct):
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class TEIDecodeRequest(msgspec.Struct):
    ids: list[TokenId | list[TokenId]]
    skip_special_tokens: bool = True


class TEIVertexRequest(msgspec.Struct):
    """Vertex AI's prediction body: each instance a body of /rerank (told by its `query` and
    `texts`) or of the served model's own route (/embed, /embed_sparse or /predict)."""

    instances: list[Any]


# Responses (for the OpenAPI document; the handlers write plain lists and dicts).


class TEIVertexResponse(msgspec.Struct):
    predictions: Annotated[
        list[list[Any]],
        msgspec.Meta(
            description="one per instance, in order: the answer of the route it went to "
            "(/embed, /embed_sparse, /predict or /rerank)"
        ),
    ]


class TEIRank(msgspec.Struct, omit_defaults=True):
    index: int
    score: float
    text: str | None = None


class TEIPrediction(msgspec.Struct):
    score: float
    label: str


class TEISparseValue(msgspec.Struct):
    index: int
    value: float


class TEISimpleToken(msgspec.Struct):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TEIEmbeddingModel(msgspec.Struct):
    pooling: str


class TEIClassifierModel(msgspec.Struct):
    id2label: dict[str, str]
    label2id: dict[str, int]


class TEIModelType(msgspec.Struct, omit_defaults=True):
    """One of the three keys, as TEI's externally tagged enum."""

    embedding: TEIEmbeddingModel | None = None
    classifier: TEIClassifierModel | None = None
    reranker: TEIClassifierModel | None = None


class TEIInfo(msgspec.Struct):
    model_id: str
    model_sha: str | None
    model_dtype: str
    served_model_name: str
    model_type: TEIModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None


class TEIErrorResponse(msgspec.Struct):
    error: str
    error_type: ErrorType


def speaks_tei(body: dict[str, Any], *fields: str) -> bool:
    """Whether a body on a path both APIs have (/embed, /rerank) is TEI's: it has all of TEI's
    `fields` and no model `name` (TEI requests name none). Where `inputs` is TEI's field (/embed),
    `inputs` with `name` is refused; elsewhere a body with `name` is the ingrain API's, whatever
    else it holds, as it was before TEI's routes."""
    if "inputs" in fields and "inputs" in body and "name" in body:
        raise TEIError(
            "Validation",
            '"inputs" is a Text Embeddings Inference field and "name" an ingrain API field: '
            "send one API's fields (TEI requests use the server's default model)",
            status=400,
        )
    return "name" not in body and all(field in body for field in fields)


class ShapeError(ValueError):
    """A body msgspec accepted whose parts do not fit together (TEI's untagged unions)."""


def as_rows(inputs: Input) -> tuple[list[str | list[int]], bool]:
    """`inputs` as a list of texts and token-id rows, and whether it was a batch (a list of
    items) rather than one item."""
    if isinstance(inputs, str):
        return [inputs], False
    if inputs and all(isinstance(item, int) for item in inputs):
        return [list(inputs)], False  # type: ignore[list-item]
    for index, item in enumerate(inputs):
        if isinstance(item, int):
            raise ShapeError(
                f"`inputs[{index}]` is a token id among other items: send one list of token ids, "
                "or a list of strings and token-id lists"
            )
        if isinstance(item, list) and not item:
            raise ShapeError(f"`inputs[{index}]` is an empty list of token ids")
    return list(inputs), True  # type: ignore[arg-type]


def as_sequences(inputs: str | list[str | list[str]]) -> tuple[list[tuple[str, ...]], bool]:
    """/predict's `inputs` as (text,) or (first, second) tuples, and whether it was a batch."""
    if isinstance(inputs, str):
        return [(inputs,)], False
    expected = (
        "a string, a pair of strings [string, string] or a batch of mixed strings and pairs "
        "[[string], [string, string], ...]"
    )
    if not inputs:
        raise ShapeError(f"`inputs` is an empty list; expected {expected}")
    if all(isinstance(item, str) for item in inputs):
        if len(inputs) > 2:
            raise ShapeError(f"`inputs` has {len(inputs)} strings; expected {expected}")
        return [tuple(inputs)], False  # type: ignore[arg-type]
    sequences = []
    for index, item in enumerate(inputs):
        if not isinstance(item, list) or not 1 <= len(item) <= 2:
            raise ShapeError(f"`inputs[{index}]` is not [string] or [string, string]: {expected}")
        sequences.append(tuple(item))
    return sequences, True


def as_id_rows(ids: list[int | list[int]]) -> tuple[list[list[int]], bool]:
    """/decode's `ids`: one list of token ids, or a list of them."""
    if all(isinstance(item, int) for item in ids):
        return [list(ids)], False  # type: ignore[list-item]
    if not all(isinstance(item, list) for item in ids):
        raise ShapeError("`ids` mixes token ids and lists: send a list of ids or a list of lists")
    return list(ids), True  # type: ignore[arg-type]
