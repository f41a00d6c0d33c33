"""Every request and response body, declared once: `api.routes.params` validates requests
against these types and `api.routes.openapi` publishes them as /openapi.json.

ingrain's own routes name their fields in camelCase (`nDims`), OpenAI's and Cohere's in
snake_case (`encoding_format`); every field is also accepted in the other spelling, and a
field sent as null counts as not sent (`api.routes.params`). The limits set on the command line
(items, characters, name length) are checked after decoding, in `api.routes.params`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from runtime.quantize import PRECISIONS
from runtime.repository.manifest import LIBRARIES
from runtime.text import TRUNCATION_SIDES

# Field types shared by several bodies, each with its documentation.
# Examples are what /docs fills "Try it out" with: the demo model (scripts/serve-demo.sh).
ModelName = Annotated[
    str,
    Meta(
        min_length=1,
        description="the model's name, as built (GET /repository_models)",
        examples=["sentence-transformers/all-MiniLM-L6-v2"],
    ),
]
Texts = Annotated[
    str | Annotated[list[str], Meta(min_length=1)],
    Meta(description="a string or a list of them", examples=[["a cat", "a dog"]]),
]
Images = Annotated[
    str | Annotated[list[str], Meta(min_length=1)],
    Meta(description="an image URL, data URI or base64 string, or a list of them"),
]
TextList = Annotated[list[str], Meta(min_length=1)]
SparseTask = Annotated[
    Literal["query", "document"],
    Meta(
        description="sparse (SPLADE) models: embed as SparseEncoder.encode_query or "
        "encode_document does (inference-free models: the query side is a lookup, the document "
        "side the model); without it, as SparseEncoder.encode does"
    ),
]
Normalize = Annotated[bool, Meta(description="scale each embedding to length 1")]
Dims = Annotated[
    int, Meta(description="keep the first dimensions (Matryoshka), from 1 to the model's size")
]
Precision = Annotated[
    Literal[PRECISIONS],
    Meta(
        description="output precision, as sentence-transformers' quantize_embeddings: "
        "int8/uint8 with the ranges calibrated at build time, binary/ubinary as packed sign bits"
    ),
]
Truncate = Annotated[
    bool, Meta(description="false: a text past the model's maximum length is a 400")
]
Direction = Annotated[
    Literal[TRUNCATION_SIDES],
    Meta(description="the side a long text is cut on (default: the model's tokenizer's)"),
]
Prompt = Annotated[str, Meta(description="a literal prefix for every text")]
PromptName = Annotated[str, Meta(description="one of the model's prompts (GET /model_info)")]
Headers = Annotated[dict[str, str], Meta(description="HTTP headers sent with each image download")]
Count = Annotated[int, Meta(ge=1, description="how many to return, best first (absent: all)")]


class Error(Struct):
    """Every error but those of the /v1 routes."""

    error: str


class OpenAIErrorDetail(Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(Struct):
    """Errors on the /v1 routes, as OpenAI's clients read them."""

    error: OpenAIErrorDetail


# Requests.


class ModelRequest(Struct, kw_only=True):
    name: ModelName


class LoadModelRequest(Struct, kw_only=True):
    name: ModelName
    library: Literal[LIBRARIES] | None = None


class _Embedding(Struct, kw_only=True, rename="camel"):
    name: ModelName
    normalize: Normalize = True
    n_dims: Dims | None = None
    precision: Precision = "float32"


class _TextEmbedding(_Embedding, kw_only=True, rename="camel"):
    truncate: Truncate = True
    truncation_direction: Direction | None = None
    prompt: Prompt | None = None
    prompt_name: PromptName | None = None


class EmbedTextRequest(_TextEmbedding, kw_only=True, rename="camel"):
    text: Texts
    top_k: (
        Annotated[
            Count,
            Meta(description="sparse (SPLADE) models: keep each text's largest entries only"),
        ]
        | None
    ) = None
    task: SparseTask | None = None


class EmbedImageRequest(_Embedding, kw_only=True, rename="camel"):
    image: Images
    image_download_headers: Headers = {}


class EmbedRequest(_TextEmbedding, kw_only=True, rename="camel"):
    """Text, images or both, each embedded by its own tower."""

    text: Texts | None = None
    image: Images | None = None
    image_download_headers: Headers = {}


class ClassifyImageRequest(Struct, kw_only=True, rename="camel"):
    name: ModelName
    image: Images
    image_download_headers: Headers = {}


class ClassifyTextRequest(Struct, kw_only=True, rename="camel"):
    name: ModelName
    text: Texts
    top_k: Annotated[Count, Meta(description="labels per text, most probable first")] | None = None


class RerankRequest(Struct, kw_only=True, rename="camel"):
    """`texts` (cross-encoder or embedding model) or `images` (CLIP) against `query`."""

    name: ModelName
    query: Annotated[str, Meta(description="the text to rank against")]
    texts: Annotated[TextList, Meta(description="texts to rank")] | None = None
    images: Annotated[TextList, Meta(description="images to rank instead (CLIP)")] | None = None
    top_n: Count | None = None
    return_text: Annotated[bool, Meta(description="answer each result's text")] = False
    raw_scores: Annotated[bool, Meta(description="logits instead of probabilities")] = False
    truncate: Truncate = True
    image_download_headers: Headers = {}


class Document(Struct):
    text: str


class CohereRerankRequest(Struct, kw_only=True):
    """Cohere's and Jina's rerank request (LangChain, LlamaIndex, the cohere SDK)."""

    model: ModelName
    query: Annotated[str, Meta(description="the text to rank against")]
    documents: Annotated[
        list[str | Document], Meta(min_length=1, description='strings or {"text": string}')
    ]
    top_n: Count | None = None
    return_documents: bool = False


TokenIds = Annotated[list[int], Meta(min_length=1)]
OpenAIInput = Annotated[
    str | Annotated[list[str | int | TokenIds], Meta(min_length=1)],
    Meta(
        description="a string, an array of strings, an array of token ids or an array of "
        "arrays of token ids",
        extra_json_schema={
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                    "minItems": 1,
                },
            ]
        },
    ),
]


class OpenAIEmbeddingRequest(Struct, kw_only=True):
    """OpenAI's embeddings request, with the text options other servers offer."""

    model: ModelName
    input: OpenAIInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(description="from 1 to the model's size")] | None = None
    user: str | None = None
    truncate: Truncate = True
    truncation_direction: Direction | None = None
    prompt: Prompt | None = None
    prompt_name: PromptName | None = None


# Responses. Embeddings and probabilities are numpy arrays when answered (api.routes.common.respond
# writes them); the types here say what the JSON holds.

Matrix = list[list[float]]
Timing = Annotated[float, Meta(description="time spent on the request in the server")]


class Message(Struct):
    message: str


class SparseEmbedding(Struct):
    """A sparse (SPLADE) model's embedding of one text: its non-zero vocabulary entries."""

    indices: Annotated[list[int], Meta(description="vocabulary ids, ascending")]
    values: list[float]


class Embeddings(Struct, rename="camel", omit_defaults=True):
    """`embeddings` from a dense model, `sparse` from a sparse (SPLADE) one."""

    processing_time_ms: Timing
    embeddings: Matrix | None = None
    sparse: list[SparseEmbedding] | None = None


class TextAndImageEmbeddings(Struct, rename="camel", omit_defaults=True):
    processing_time_ms: Timing
    text_embeddings: Matrix | None = None
    image_embeddings: Matrix | None = None


class Probabilities(Struct, rename="camel"):
    probabilities: Matrix
    processing_time_ms: Timing


class Label(Struct):
    label: str
    score: float


class TextClasses(Struct, rename="camel"):
    probabilities: Matrix
    labels: list[list[Label]]
    processing_time_ms: Timing


class Ranked(Struct, omit_defaults=True):
    index: int
    score: float
    text: str | None = None


class Ranking(Struct, rename="camel"):
    results: list[Ranked]
    processing_time_ms: Timing


class CohereRanked(Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: Document | None = None


class CohereUsage(Struct):
    total_tokens: int
    documents: int


class CohereTokens(Struct):
    input_tokens: int
    output_tokens: int


class CohereBilled(Struct):
    search_units: int


class CohereMeta(Struct):
    billed_units: CohereBilled
    tokens: CohereTokens


class CohereRanking(Struct):
    """Jina's usage, and Cohere's (meta.tokens) as its SDKs read it."""

    id: str
    results: list[CohereRanked]
    model: str
    usage: CohereUsage
    meta: CohereMeta


class OpenAIEmbedding(Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Annotated[
        list[float] | str, Meta(description="floats, or base64 of little-endian float32")
    ]


class OpenAIUsage(Struct):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddings(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ingrain"


class OpenAIModels(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class EmbeddingSize(Struct, rename="camel"):
    embedding_size: int


class Labels(Struct):
    labels: list[str]


class TowerInfo(Struct, rename="camel"):
    embedding_size: int
    calibrated: bool
    # The figures of the verified int8 variant int8 serves here (ingrain-build --int8; the
    # packed graph's where packing serves it), or null.
    int8: dict[str, Any] | None
    # What it runs on here: backend, precision, chosenBy and the probe figures under auto.
    engine: dict[str, Any]


class ModelInfo(Struct, rename="camel"):
    """What a client needs to call a model: towers, sizes, prompts, precisions."""

    name: str
    library: str
    task: str
    towers: dict[str, TowerInfo]
    max_length: int | None
    prompts: dict[str, str]
    default_prompt_name: str | None
    pooling_includes_prompt: bool


class LoadedModel(Struct):
    name: str
    library: str | None  # None: a --preload model not fetched yet from object storage


class LoadedModels(Struct):
    models: list[LoadedModel]


class RepositoryModel(Struct):
    name: str
    library: str
    state: Literal["READY", "UNAVAILABLE"]


class RepositoryModels(Struct):
    models: list[RepositoryModel]


class ModelReadiness(Struct, omit_defaults=True):
    name: str
    ready: bool
    reason: str | None = None


class Unreadable(Struct):
    name: str
    reason: str


class Readiness(Struct, omit_defaults=True):
    """With `error` (a 503) when a model is not ready: it names each one and why. With
    `unreadable` when models were skipped because their objects or files cannot be read
    (they do not make the server unready: it serves the others)."""

    ready: bool
    models: list[ModelReadiness]
    error: str | None = None
    unreadable: list[Unreadable] | None = None


class OneModelReadiness(Struct, omit_defaults=True):
    name: str
    ready: bool
    error: str | None = None


class Metrics(Struct, rename="camel"):
    model_stats: list[dict[str, Any]]
