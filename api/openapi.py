"""The OpenAPI 3 description of every route, served at GET /openapi.json.

A test checks that every route of the app is described here and every described route exists.
"""

from __future__ import annotations

from typing import Any

import falcon

from api.resources import respond

JSON = "application/json"
STRING_OR_LIST = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ]
}
NAME = {"type": "string", "minLength": 1, "description": "The model's name, as built."}
NULLABLE_DIMS = {"type": ["integer", "null"], "minimum": 1}
HEADERS = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {JSON: {"schema": schema}}}


ERRORS = {
    "400": {
        "description": "Invalid input; the message says how to fix it.",
        **_json(_ref("Error")),
    },
    "401": {"description": "A key is required (when keys are configured).", **_json(_ref("Error"))},
    "404": {"description": "Unknown model or route.", **_json(_ref("Error"))},
    "413": {"description": "Body, item count or item too large.", **_json(_ref("Error"))},
    "415": {"description": "The body is not JSON.", **_json(_ref("Error"))},
    "503": {"description": "Overloaded: retry after Retry-After seconds.", **_json(_ref("Error"))},
}


def _operation(summary: str, answer: str, body: str | None = None, query: bool = False) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "Success.", **_json(_ref(answer))}, **ERRORS},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(_ref(body))}
    if query:
        operation["parameters"] = [
            {"name": "name", "in": "query", "required": True, "schema": NAME}
        ]
    return operation


EMBED_OPTIONS = {
    "normalize": {"type": ["boolean", "null"], "default": True},
    "nDims": NULLABLE_DIMS,
    "n_dims": NULLABLE_DIMS,
}
IMAGE_OPTIONS = {"imageDownloadHeaders": HEADERS, "image_download_headers": HEADERS}
EMBEDDINGS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
TIMING = {"processingTimeMs": {"type": "number"}}

SCHEMAS = {
    "Error": _object({"error": {"type": "string"}}, ["error"]),
    "Message": _object({"message": {"type": "string"}}, ["message"]),
    "EmbedTextRequest": _object(
        {"name": NAME, "text": STRING_OR_LIST, **EMBED_OPTIONS}, ["name", "text"]
    ),
    "EmbedImageRequest": _object(
        {"name": NAME, "image": STRING_OR_LIST, **EMBED_OPTIONS, **IMAGE_OPTIONS},
        ["name", "image"],
    ),
    "EmbedRequest": _object(
        {
            "name": NAME,
            "text": STRING_OR_LIST,
            "image": STRING_OR_LIST,
            **EMBED_OPTIONS,
            **IMAGE_OPTIONS,
        },
        ["name"],
    ),
    "ClassifyRequest": _object(
        {"name": NAME, "image": STRING_OR_LIST, **IMAGE_OPTIONS}, ["name", "image"]
    ),
    "ModelRequest": _object({"name": NAME}, ["name"]),
    "LoadModelRequest": _object(
        {"name": NAME, "library": {"enum": ["sentence_transformers", "open_clip", "timm"]}},
        ["name"],
    ),
    "Embeddings": _object({"embeddings": EMBEDDINGS, **TIMING}, ["embeddings", "processingTimeMs"]),
    "TextAndImageEmbeddings": _object(
        {"textEmbeddings": EMBEDDINGS, "imageEmbeddings": EMBEDDINGS, **TIMING},
        ["processingTimeMs"],
    ),
    "Probabilities": _object(
        {"probabilities": EMBEDDINGS, **TIMING}, ["probabilities", "processingTimeMs"]
    ),
    "Metrics": _object(
        {"modelStats": {"type": "array", "items": {"type": "object"}}}, ["modelStats"]
    ),
    "EmbeddingSize": _object({"embeddingSize": {"type": "integer"}}, ["embeddingSize"]),
    "Labels": _object({"labels": {"type": "array", "items": {"type": "string"}}}, ["labels"]),
    "LoadedModels": _object(
        {
            "models": {
                "type": "array",
                "items": _object(
                    {"name": {"type": "string"}, "library": {"type": "string"}}, ["name", "library"]
                ),
            }
        },
        ["models"],
    ),
    "RepositoryModels": _object(
        {
            "models": {
                "type": "array",
                "items": _object(
                    {
                        "name": {"type": "string"},
                        "library": {"type": "string"},
                        "state": {"enum": ["READY", "UNAVAILABLE"]},
                    },
                    ["name", "library", "state"],
                ),
            }
        },
        ["models"],
    ),
    "OpenAPI": {"type": "object"},
}

EMBED = _operation(
    "Embed texts and/or images with one model.", "TextAndImageEmbeddings", "EmbedRequest"
)

PATHS = {
    "/health": {
        "get": _operation("Liveness of the inference (or model) server.", "Message"),
        "head": {"summary": "Liveness, headers only.", "responses": {"200": {"description": "Up"}}},
    },
    "/embed_text": {"post": _operation("Embed texts.", "Embeddings", "EmbedTextRequest")},
    "/embed_image": {"post": _operation("Embed images.", "Embeddings", "EmbedImageRequest")},
    "/embed": {"post": EMBED},
    "/infer": {"post": EMBED},
    "/classify_image": {
        "post": _operation("Class probabilities per image.", "Probabilities", "ClassifyRequest")
    },
    "/metrics": {
        "get": _operation("Execution statistics (JSON; Prometheus text on Accept).", "Metrics")
    },
    "/metrics/prometheus": {
        "get": {
            "summary": "Execution statistics as Prometheus text.",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **ERRORS,
            },
        }
    },
    "/model_embedding_size": {
        "get": _operation("A model's embedding size.", "EmbeddingSize", query=True)
    },
    "/model_classification_labels": {
        "get": _operation("A classifier's labels, in class order.", "Labels", query=True)
    },
    "/load_model": {
        "post": _operation(
            "Add a model to the loaded set (building it if needed).", "Message", "LoadModelRequest"
        )
    },
    "/unload_model": {
        "post": _operation("Remove a model from the loaded set.", "Message", "ModelRequest")
    },
    "/delete_model": {
        "delete": _operation(
            "Unload a model and delete it from the repository.", "Message", "ModelRequest"
        )
    },
    "/loaded_models": {"get": _operation("The loaded set.", "LoadedModels")},
    "/repository_models": {"get": _operation("Every model in the repository.", "RepositoryModels")},
    "/openapi.json": {"get": _operation("This document.", "OpenAPI")},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "ingrain-server",
        "version": "1",
        "description": "Embedding and image-classification inference with the ingrain API. "
        'Keys are accepted in camelCase and snake_case. Errors are {"error": "..."}.',
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "paths": PATHS,
}


class OpenAPI:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(resp, DOCUMENT)
