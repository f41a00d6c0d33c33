"""The Text Embeddings Inference routes' part of the OpenAPI document, generated from the msgspec
Structs of api.tei_types. /embed and /rerank take either API's body (`oneOf`)."""

from __future__ import annotations

from typing import Any

import msgspec

from api import tei_types as tei

REF = "#/components/schemas/{name}"
# path -> (summary, request body type, answer type)
ROUTES: dict[str, tuple[str, Any, Any]] = {
    "/embed": ("TEI: one pooled embedding per input.", tei.TEIEmbedRequest, list[list[float]]),
    "/embed_all": (
        "TEI: each input's token embeddings (models built with --token-embeddings).",
        tei.TEIEmbedAllRequest,
        list[list[list[float]]],
    ),
    "/embed_sparse": (
        "TEI: each input's non-zero vocabulary entries (SPLADE models).",
        tei.TEIEmbedSparseRequest,
        list[list[tei.TEISparseValue]],
    ),
    "/rerank": ("TEI: texts by relevance to the query.", tei.TEIRerankRequest, list[tei.TEIRank]),
    "/predict": (
        "TEI: label scores per text or pair (one list, or a list per input of a batch).",
        tei.TEIPredictRequest,
        list[tei.TEIPrediction | list[tei.TEIPrediction]],
    ),
    "/similarity": (
        "TEI: cosine similarity of source_sentence with each sentence.",
        tei.TEISimilarityRequest,
        list[float],
    ),
    "/tokenize": (
        "TEI: the tokens of each input.",
        tei.TEITokenizeRequest,
        list[list[tei.TEISimpleToken]],
    ),
    "/decode": ("TEI: token ids back to text.", tei.TEIDecodeRequest, list[str]),
    "/info": ("TEI: the served model and limits.", None, tei.TEIInfo),
}
# POST / answers as the served model's own route does.
ROOT_ROUTES = ("/embed", "/embed_sparse", "/rerank", "/predict", "/similarity")
ERROR_STATUSES = {
    "400": "Empty input, or no (or several) models to serve the request: see --default-model.",
    "413": "More inputs than the server takes in one request.",
    "422": "Invalid input; the message says how to fix it.",
    "429": "Overloaded: retry after Retry-After seconds.",
}


def add_tei_paths(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Describe the TEI routes in `paths` (merging with the ingrain API's /embed and /rerank)
    and their types in `schemas`."""
    kinds = [tei.TEIErrorResponse]
    for _, body, answer in ROUTES.values():
        kinds += [body, answer] if body is not None else [answer]
    refs, components = msgspec.json.schema_components(kinds, ref_template=REF)
    schemas.update(components)
    error, refs = refs[0], iter(refs[1:])
    errors = {
        status: {"description": text, "content": {"application/json": {"schema": error}}}
        for status, text in ERROR_STATUSES.items()
    }
    operations = {}
    for path, (summary, body, _) in ROUTES.items():
        request = next(refs) if body is not None else None
        operations[path] = _operation(summary, request, next(refs), errors)
    for path, operation in operations.items():
        method = "get" if path == "/info" else "post"
        shared = paths.get(path, {}).get(method)
        paths.setdefault(path, {})[method] = _either(shared, operation) if shared else operation
    paths["/"] = {
        **paths.get("/", {}),
        "post": _merged(
            "TEI: the served model's own task (POST /embed, /embed_sparse, /rerank, /predict, or "
            "/similarity for a sentence-similarity body).",
            [operations[path] for path in ROOT_ROUTES],
        ),
    }


def _operation(summary: str, request: Any, answer: Any, errors: dict[str, Any]) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "Success.", "content": {"application/json": {"schema": answer}}},
            **errors,
        },
    }
    if request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": request}},
        }
    return operation


def _schema(part: dict[str, Any]) -> dict[str, Any]:
    return part["content"]["application/json"]["schema"]


def _merged(summary: str, operations: list[dict]) -> dict:
    """One operation taking and answering any of `operations`' bodies."""
    merged = _operation(
        summary,
        {"oneOf": [_schema(op["requestBody"]) for op in operations]},
        {"oneOf": [_schema(op["responses"]["200"]) for op in operations]},
        {},
    )
    for operation in operations:
        for status, response in operation["responses"].items():
            merged["responses"].setdefault(status, response)
    return merged


def _either(ingrain: dict, operation: dict) -> dict:
    """A path both APIs serve: either body, either answer; the ingrain API's error statuses
    (whose `{"error"}` TEI's error shape extends) and TEI's others."""
    merged = _merged(f"{ingrain['summary']} Or {operation['summary']}", [ingrain, operation])
    return {**ingrain, **merged}
