"""The OpenAPI 3.1 description of every route, served at GET /openapi.json: generated from the
request and response types in api.routes.schemas and the table of routes below.

Tests check that every route of the app is described here, that every described route exists,
and that real answers of every route validate against this document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import falcon
import msgspec

from api.auth import Access
from api.errors import OPENAI_PREFIX
from api.routes import params, schemas
from api.routes import tei_types as tei
from api.routes.common import respond
from api.routes.schemas import Matrix

JSON = "application/json"
# A model's name, wherever one is asked for (bodies, the query, the path).
NAME = msgspec.json.schema(schemas.ModelName)


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    summary: str
    # The JSON body of a 200 answer (None: no JSON body), and of the request.
    answer: type | None
    body: type | None = None
    # The model's name is the query parameter `name` (names hold '/', so not the path).
    name_in_query: bool = False
    # Other answers than the errors every route may give: status -> (description, body).
    answers: tuple[tuple[str, str, type], ...] = ()
    # A page for people (or one of its files): HTML out, no key needed.
    page: bool = False
    # Text Embeddings Inference's: its error shape and statuses (api.routes.tei_errors).
    tei: bool = False


NOT_READY = "Not ready: the error names each model that is not, and why."
BAD_GATEWAY = "s3:// engines: the object store failed or holds a broken version; it is named."
# Text Embeddings Inference's POST routes: (path, summary, answer, body).
TEI: tuple[tuple[str, str, Any, type], ...] = (
    ("/embed", "one pooled embedding per input.", Matrix, tei.TEIEmbedRequest),
    (
        "/embed_all",
        "each input's token embeddings (models built with --token-embeddings).",
        list[Matrix],
        tei.TEIEmbedAllRequest,
    ),
    (
        "/embed_sparse",
        "each input's non-zero vocabulary entries (SPLADE models).",
        list[list[tei.TEISparseValue]],
        tei.TEIEmbedSparseRequest,
    ),
    ("/rerank", "texts by relevance to the query.", list[tei.TEIRank], tei.TEIRerankRequest),
    (
        "/predict",
        "label scores per text or pair (one list, or a list per input of a batch).",
        list[tei.TEIPrediction | list[tei.TEIPrediction]],
        tei.TEIPredictRequest,
    ),
    (
        "/similarity",
        "cosine similarity of source_sentence with each sentence.",
        list[float],
        tei.TEISimilarityRequest,
    ),
    (
        "/tokenize",
        "the tokens of each input.",
        list[list[tei.TEISimpleToken]],
        tei.TEITokenizeRequest,
    ),
    ("/decode", "token ids back to text.", list[str], tei.TEIDecodeRequest),
    (
        "/vertex",
        "Vertex AI's shape: each instance as /rerank (a rerank body) or the served model's own "
        "route.",
        tei.TEIVertexResponse,
        tei.TEIVertexRequest,
    ),
)
# POST / (TEI's root) answers as the served model's own route: one of these.
TEI_ROOT = ("/embed", "/embed_sparse", "/rerank", "/predict", "/similarity")
TEI_ROOT_SUMMARY = (
    "TEI: the served model's own task (as POST /embed, /embed_sparse, /rerank or /predict; "
    "/similarity for a sentence-similarity body)."
)
ROUTES = (
    Route("/health", "get", "Liveness of the inference (or model) server.", schemas.Message),
    Route("/health", "head", "Liveness, headers only.", None),
    Route(
        "/ready",
        "get",
        "Every model this server must serve is loaded, warmed up and executing.",
        schemas.Readiness,
        answers=(("503", NOT_READY, schemas.Readiness),),
    ),
    Route(
        "/models/ready",
        "get",
        "One model's readiness.",
        schemas.OneModelReadiness,
        name_in_query=True,
        answers=(("503", NOT_READY, schemas.OneModelReadiness),),
    ),
    Route("/embed_text", "post", "Embed texts.", schemas.Embeddings, schemas.EmbedTextRequest),
    Route("/embed_image", "post", "Embed images.", schemas.Embeddings, schemas.EmbedImageRequest),
    *(
        Route(
            path,
            "post",
            "Embed texts and/or images with one model.",
            schemas.TextAndImageEmbeddings,
            schemas.EmbedRequest,
        )
        for path in ("/embed", "/infer")
    ),
    Route(
        "/classify_image",
        "post",
        "Class probabilities per image.",
        schemas.Probabilities,
        schemas.ClassifyImageRequest,
    ),
    Route(
        "/rerank",
        "post",
        "Texts (or images, with CLIP) by relevance to a query, highest first.",
        schemas.Ranking,
        schemas.RerankRequest,
    ),
    *(
        Route(
            path,
            "post",
            "Rerank in the Cohere (v1 and v2) / Jina API shape.",
            schemas.CohereRanking,
            schemas.CohereRerankRequest,
        )
        for path in ("/v1/rerank", "/v2/rerank")
    ),
    Route(
        "/classify_text",
        "post",
        "Class probabilities and top labels per text.",
        schemas.TextClasses,
        schemas.ClassifyTextRequest,
    ),
    Route(
        "/metrics",
        "get",
        "Execution statistics (JSON; Prometheus text on Accept).",
        schemas.Metrics,
    ),
    Route("/metrics/prometheus", "get", "Execution statistics as Prometheus text.", str),
    Route(
        "/model_embedding_size",
        "get",
        "A model's embedding size.",
        schemas.EmbeddingSize,
        name_in_query=True,
    ),
    Route(
        "/model_info",
        "get",
        "A model's towers, sizes, maximum length, prompts and calibration.",
        schemas.ModelInfo,
        name_in_query=True,
    ),
    Route(
        "/model_classification_labels",
        "get",
        "A classifier's labels, in class order.",
        schemas.Labels,
        name_in_query=True,
    ),
    Route(
        "/v1/embeddings",
        "post",
        "OpenAI's embeddings API.",
        schemas.OpenAIEmbeddings,
        schemas.OpenAIEmbeddingRequest,
    ),
    Route("/v1/models", "get", "OpenAI's model list: the repository.", schemas.OpenAIModels),
    Route("/v1/models/{model}", "get", "One model, in OpenAI's shape.", schemas.OpenAIModel),
    Route(
        "/load_model",
        "post",
        "Add a model to the loaded set (building it if needed).",
        schemas.Message,
        schemas.LoadModelRequest,
        answers=(("502", BAD_GATEWAY, schemas.Error),),
    ),
    Route(
        "/unload_model",
        "post",
        "Remove a model from the loaded set.",
        schemas.Message,
        schemas.ModelRequest,
    ),
    Route(
        "/delete_model",
        "delete",
        "Unload a model and delete it from the repository.",
        schemas.Message,
        schemas.ModelRequest,
    ),
    Route("/loaded_models", "get", "The loaded set.", schemas.LoadedModels),
    Route("/repository_models", "get", "Every model in the repository.", schemas.RepositoryModels),
    Route("/openapi.json", "get", "This document.", dict),
    # The pages, for people: GET, and HEAD for link checkers and monitors.
    *(
        Route(path, method, summary, None, page=True)
        for path, summary in (
            ("/", "The playground: try each loaded model in the browser."),
            ("/playground", "The playground: try each loaded model in the browser."),
            ("/docs", "This API reference (Swagger UI)."),
            ("/pages/{file}", "A script, style sheet or image of the pages."),
        )
        for method in ("get", "head")
    ),
    # Text Embeddings Inference's API. /embed and /rerank take either API's body (the ingrain
    # routes above, or TEI's); POST / answers as the served model's own route does.
    *(
        Route(path, "post", f"TEI: {summary}", answer, body, tei=True)
        for path, summary, answer, body in TEI
    ),
    *(
        Route("/", "post", TEI_ROOT_SUMMARY, answer, body, tei=True)
        for path, _, answer, body in TEI
        if path in TEI_ROOT
    ),
    Route("/info", "get", "TEI: the served model and limits.", tei.TEIInfo, tei=True),
)

# The errors every route may answer, in the route family's shape (api.errors).
ERRORS = (
    ("400", "Invalid input; the message says how to fix it."),
    ("401", "A key is required (when keys are configured)."),
    ("404", "Unknown model or route."),
    ("413", "Body, item count or item too large."),
    ("415", "The body is not JSON."),
    ("503", "Overloaded: retry after Retry-After seconds."),
)
# Text Embeddings Inference's errors, in its shape ({"error", "error_type"}). On /embed and
# /rerank a 401 comes before the body says which API the request is: the ingrain shape there
# (the two operations' answers are merged).
TEI_ERRORS = (
    ("400", "Empty input, or no (or several) models to serve the request: see --default-model."),
    ("401", "A key is required (when keys are configured)."),
    ("404", "The default model is no longer in the repository."),
    ("413", "More inputs, tokens or bytes than the server takes in one request."),
    ("415", "The body is not JSON."),
    ("422", "Invalid input; the message says how to fix it."),
    ("429", "Overloaded: retry after Retry-After seconds."),
    ("503", "The model is not available right now; retry shortly."),
)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {JSON: {"schema": schema}}}


def _errors(route: Route, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    """The errors `route` may answer, in its family's shape (api.errors)."""
    if route.tei:
        return {
            status: {
                "description": text,
                **_json(refs[tei.TEIErrorResponse]),
            }
            for status, text in TEI_ERRORS
        }
    error = refs[schemas.OpenAIError if route.path.startswith(OPENAI_PREFIX) else schemas.Error]
    return {status: {"description": text, **_json(error)} for status, text in ERRORS}


def _operation(route: Route, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    responses = _errors(route, refs)
    if route.page:
        responses["200"] = {"description": "The page.", "content": {"text/html": {}}}
    elif route.answer is None:
        responses["200"] = {"description": "Success."}
    elif route.answer is str:
        responses["200"] = {
            "description": "Success.",
            "content": {"text/plain": {"schema": refs[str]}},
        }
    else:
        responses["200"] = {"description": "Success.", **_json(refs[route.answer])}
    for status, text, kind in route.answers:
        responses[status] = {"description": text, **_json(refs[kind])}
    operation: dict[str, Any] = {"summary": route.summary, "responses": responses}
    if route.page or route.path == "/openapi.json":
        operation["security"] = []  # /docs reads this document before a key is typed
    if route.body is not None:
        operation["requestBody"] = {"required": True, **_json(refs[route.body])}
    if route.name_in_query:
        operation["parameters"] = [
            {"name": "name", "in": "query", "required": True, "schema": NAME}
        ]
    if "{model}" in route.path:
        operation["parameters"] = [
            {"name": "model", "in": "path", "required": True, "schema": NAME}
        ]
    if "{file}" in route.path:
        operation["parameters"] = [
            {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
    return operation


def _either(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One operation for two routes on one path and method (/embed and /rerank speak the ingrain
    API and TEI's, told apart by the body; POST / answers as any of TEI's task routes): either
    body, and for each status either answer."""
    merged = {**first, "summary": _joined(first["summary"], second["summary"])}
    body = _any_of(_schema(first["requestBody"]), _schema(second["requestBody"]))
    merged["requestBody"] = {"required": True, **_json(body)}
    responses = dict(first["responses"])
    for status, answer in second["responses"].items():
        mine = responses.get(status)
        responses[status] = (
            answer
            if mine is None
            else {
                "description": _joined(mine["description"], answer["description"]),
                **_json(_any_of(_schema(mine), _schema(answer))),
            }
        )
    merged["responses"] = responses
    return merged


def _schema(part: dict[str, Any]) -> dict[str, Any]:
    return part["content"][JSON]["schema"]


def _any_of(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    options: list[dict[str, Any]] = []
    for schema in (*first.get("anyOf", [first]), *second.get("anyOf", [second])):
        if schema not in options:
            options.append(schema)
    return options[0] if len(options) == 1 else {"anyOf": options}


def _joined(first: str, second: str) -> str:
    return first if second == first else f"{first} Or {second}"


def _with_other_spellings(components: dict[str, Any], kinds: set[type]) -> None:
    """Each request field under both of the names it is accepted as (`nDims` and `n_dims`)."""
    for kind in kinds:
        properties = components[kind.__name__]["properties"]
        for other, field in params.spellings(kind).items():
            properties[other] = properties[field]


def document() -> dict[str, Any]:
    kinds = [route.answer for route in ROUTES] + [route.body for route in ROUTES]
    kinds += [kind for route in ROUTES for _, _, kind in route.answers]
    kinds += [schemas.Error, schemas.OpenAIError, tei.TEIErrorResponse]
    named = list(dict.fromkeys(kind for kind in kinds if kind is not None))
    found, components = msgspec.json.schema_components(
        named, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(named, found, strict=True))
    # TEI's bodies are TEI's, field for field: one spelling.
    ingrain_bodies = {route.body for route in ROUTES if route.body is not None and not route.tei}
    _with_other_spellings(components, ingrain_bodies)
    paths: dict[str, Any] = {}
    for route in ROUTES:
        operations = paths.setdefault(route.path, {})
        operation = _operation(route, refs)
        shared = operations.get(route.method)
        operations[route.method] = operation if shared is None else _either(shared, operation)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ingrain-server",
            "version": "1",
            "description": "Embedding, reranking and classification inference with the ingrain "
            "API. Fields are accepted in camelCase and snake_case; a field sent as null is the "
            'same as one not sent. Errors are {"error": "..."}, except on the /v1 routes, which '
            "answer in OpenAI's error shape, and on Text Embeddings Inference's routes and bodies, "
            'which answer in its shape, {"error": "...", "error_type": "..."}. TEI\'s routes '
            "take TEI's fields as TEI names them.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # The key, where the server is given --api-key / --admin-key (optional: the empty entry);
        # Swagger UI sends it only on operations with a security requirement.
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


DOCUMENT = document()


class OpenAPI:
    # Open like the pages: /docs must read it before a key is typed into Authorize. It
    # describes routes only, never models or data.
    access = Access.OPEN

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(resp, DOCUMENT)
