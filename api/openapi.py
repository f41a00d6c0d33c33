"""The OpenAPI 3 description of every route, served at GET /openapi.json.

A test checks that every route of the app is described here and every described route exists.
"""

from __future__ import annotations

from typing import Any

import falcon

from api.resources import respond
from api.tei_openapi import add_tei_paths
from runtime.repository.manifest import LIBRARIES

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


def _errors(schema: str) -> dict[str, Any]:
    return {
        "400": {
            "description": "Invalid input; the message says how to fix it.",
            **_json(_ref(schema)),
        },
        "401": {
            "description": "A key is required (when keys are configured).",
            **_json(_ref(schema)),
        },
        "404": {"description": "Unknown model or route.", **_json(_ref(schema))},
        "413": {"description": "Body, item count or item too large.", **_json(_ref(schema))},
        "415": {"description": "The body is not JSON.", **_json(_ref(schema))},
        "503": {
            "description": "Overloaded: retry after Retry-After seconds.",
            **_json(_ref(schema)),
        },
    }


ERRORS = _errors("Error")
# The /v1 routes answer errors in OpenAI's shape.
OPENAI_ERRORS = _errors("OpenAIError")


def _operation(
    summary: str, answer: str, body: str | None = None, query: bool = False, openai: bool = False
) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "Success.", **_json(_ref(answer))},
            **(OPENAI_ERRORS if openai else ERRORS),
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(_ref(body))}
    if query:
        operation["parameters"] = [
            {"name": "name", "in": "query", "required": True, "schema": NAME}
        ]
    return operation


PRECISION = {
    "enum": ["float32", "int8", "uint8", "binary", "ubinary", None],
    "default": "float32",
    "description": "Output precision, as sentence-transformers' quantize_embeddings: int8/uint8 "
    "with the ranges calibrated at build time, binary/ubinary as packed sign bits.",
}
EMBED_OPTIONS = {
    "normalize": {"type": ["boolean", "null"], "default": True},
    "nDims": NULLABLE_DIMS,
    "n_dims": NULLABLE_DIMS,
    "precision": PRECISION,
}
NULLABLE_STRING = {"type": ["string", "null"]}
DIRECTION = {"enum": ["right", "left", None], "default": "right"}
TEXT_OPTIONS = {
    "truncate": {
        "type": ["boolean", "null"],
        "default": True,
        "description": "false: a text past the model's maximum length is a 400.",
    },
    "truncationDirection": DIRECTION,
    "truncation_direction": DIRECTION,
    "prompt": {**NULLABLE_STRING, "description": "A literal prefix for every text."},
    "promptName": {**NULLABLE_STRING, "description": "One of the model's prompts (/model_info)."},
    "prompt_name": NULLABLE_STRING,
}
TOKEN_IDS = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
OPENAI_INPUT = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        TOKEN_IDS,
        {"type": "array", "items": TOKEN_IDS, "minItems": 1},
    ]
}
IMAGE_OPTIONS = {"imageDownloadHeaders": HEADERS, "image_download_headers": HEADERS}
EMBEDDINGS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
TIMING = {"processingTimeMs": {"type": "number"}}

OPENAI_MODEL = _object(
    {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
    ["id", "object", "created", "owned_by"],
)
COUNT = {"type": ["integer", "null"], "minimum": 1}
FLAG = {"type": ["boolean", "null"]}
TEXT_LIST = {"type": "array", "items": {"type": "string"}, "minItems": 1}
SCORE = {"type": "number"}
RERANK_SCHEMAS = {
    "RerankRequest": _object(
        {
            "name": NAME,
            "query": {"type": "string"},
            "texts": {**TEXT_LIST, "description": "Texts to rank (cross-encoder or embedding)."},
            "images": {**TEXT_LIST, "description": "Images to rank instead (CLIP models)."},
            "top_n": COUNT,
            "return_text": FLAG,
            "raw_scores": FLAG,
            "truncate": FLAG,
            **IMAGE_OPTIONS,
        },
        ["name", "query"],
    ),
    "Ranking": _object(
        {
            "results": {
                "type": "array",
                "items": _object(
                    {"index": {"type": "integer"}, "score": SCORE, "text": {"type": "string"}},
                    ["index", "score"],
                ),
            },
            **TIMING,
        },
        ["results", "processingTimeMs"],
    ),
    "CohereRerankRequest": _object(
        {
            "model": NAME,
            "query": {"type": "string"},
            "documents": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "oneOf": [
                        {"type": "string"},
                        _object({"text": {"type": "string"}}, ["text"]),
                    ]
                },
            },
            "top_n": COUNT,
            "return_documents": FLAG,
        },
        ["model", "query", "documents"],
    ),
    "CohereRanking": _object(
        {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "results": {
                "type": "array",
                "items": _object(
                    {
                        "index": {"type": "integer"},
                        "relevance_score": SCORE,
                        "document": _object({"text": {"type": "string"}}, ["text"]),
                    },
                    ["index", "relevance_score"],
                ),
            },
            "usage": {"type": "object"},
            "meta": {"type": "object"},
        },
        ["results", "model"],
    ),
    "ClassifyTextRequest": _object(
        {"name": NAME, "text": STRING_OR_LIST, "top_k": COUNT}, ["name", "text"]
    ),
    "TextClasses": _object(
        {
            "probabilities": EMBEDDINGS,
            "labels": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": _object({"label": {"type": "string"}, "score": SCORE}, ["label"]),
                },
            },
            **TIMING,
        },
        ["probabilities", "labels", "processingTimeMs"],
    ),
}

SCHEMAS = {
    "Error": _object({"error": {"type": "string"}}, ["error"]),
    "Message": _object({"message": {"type": "string"}}, ["message"]),
    "EmbedTextRequest": _object(
        {"name": NAME, "text": STRING_OR_LIST, **EMBED_OPTIONS, **TEXT_OPTIONS}, ["name", "text"]
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
            **TEXT_OPTIONS,
            **IMAGE_OPTIONS,
        },
        ["name"],
    ),
    "ClassifyRequest": _object(
        {"name": NAME, "image": STRING_OR_LIST, **IMAGE_OPTIONS}, ["name", "image"]
    ),
    "ModelRequest": _object({"name": NAME}, ["name"]),
    "LoadModelRequest": _object(
        {"name": NAME, "library": {"enum": list(LIBRARIES)}},
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
    "ModelInfo": _object(
        {
            "name": {"type": "string"},
            "library": {"type": "string"},
            "task": {"type": "string"},
            "towers": {
                "type": "object",
                "additionalProperties": _object(
                    {"embeddingSize": {"type": "integer"}, "calibrated": {"type": "boolean"}},
                    ["embeddingSize", "calibrated"],
                ),
            },
            "maxLength": {"type": ["integer", "null"]},
            "prompts": {"type": "object", "additionalProperties": {"type": "string"}},
            "defaultPromptName": NULLABLE_STRING,
            "poolingIncludesPrompt": {"type": "boolean"},
        },
        ["name", "library", "task", "towers", "maxLength", "prompts", "defaultPromptName"],
    ),
    "OpenAIError": _object(
        {
            "error": _object(
                {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": NULLABLE_STRING,
                    "code": NULLABLE_STRING,
                },
                ["message", "type", "param", "code"],
            )
        },
        ["error"],
    ),
    "OpenAIEmbeddingRequest": _object(
        {
            "model": NAME,
            "input": OPENAI_INPUT,
            "encoding_format": {"enum": ["float", "base64"], "default": "float"},
            "dimensions": {"type": "integer", "minimum": 1},
            "user": {"type": "string"},
            "truncate": TEXT_OPTIONS["truncate"],
            "truncation_direction": DIRECTION,
            "prompt": TEXT_OPTIONS["prompt"],
            "prompt_name": TEXT_OPTIONS["promptName"],
        },
        ["model", "input"],
    ),
    "OpenAIEmbeddings": _object(
        {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": _object(
                    {
                        "object": {"const": "embedding"},
                        "index": {"type": "integer"},
                        "embedding": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "base64 little-endian f32"},
                            ]
                        },
                    },
                    ["object", "index", "embedding"],
                ),
            },
            "model": {"type": "string"},
            "usage": _object(
                {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
                ["prompt_tokens", "total_tokens"],
            ),
        },
        ["object", "data", "model", "usage"],
    ),
    "OpenAIModel": OPENAI_MODEL,
    "OpenAIModels": _object(
        {"object": {"const": "list"}, "data": {"type": "array", "items": OPENAI_MODEL}},
        ["object", "data"],
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
    "Readiness": _object(
        {
            "ready": {"type": "boolean"},
            "models": {
                "type": "array",
                "items": _object(
                    {"name": {"type": "string"}, "ready": {"type": "boolean"}},
                    ["name", "ready"],
                ),
            },
        },
        ["ready", "models"],
    ),
    "ModelReadiness": _object(
        {"name": {"type": "string"}, "ready": {"type": "boolean"}}, ["name", "ready"]
    ),
    "OpenAPI": {"type": "object"},
    **RERANK_SCHEMAS,
}

EMBED = _operation(
    "Embed texts and/or images with one model.", "TextAndImageEmbeddings", "EmbedRequest"
)

COHERE_RERANK = _operation(
    "Rerank in the Cohere (v1 and v2) / Jina API shape.", "CohereRanking", "CohereRerankRequest"
)

PATHS = {
    "/health": {
        "get": _operation("Liveness of the inference (or model) server.", "Message"),
        "head": {"summary": "Liveness, headers only.", "responses": {"200": {"description": "Up"}}},
    },
    "/ready": {
        "get": {
            "summary": "Every model this server must serve is loaded, warmed up and executing.",
            "responses": {"200": {"description": "Ready.", **_json(_ref("Readiness"))}},
        }
    },
    "/models/ready": {"get": _operation("One model's readiness.", "ModelReadiness", query=True)},
    "/embed_text": {"post": _operation("Embed texts.", "Embeddings", "EmbedTextRequest")},
    "/embed_image": {"post": _operation("Embed images.", "Embeddings", "EmbedImageRequest")},
    "/embed": {"post": EMBED},
    "/infer": {"post": EMBED},
    "/classify_image": {
        "post": _operation("Class probabilities per image.", "Probabilities", "ClassifyRequest")
    },
    "/rerank": {
        "post": _operation(
            "Texts (or images, with CLIP) by relevance to a query, highest first.",
            "Ranking",
            "RerankRequest",
        )
    },
    "/v1/rerank": {"post": COHERE_RERANK},
    "/v2/rerank": {"post": COHERE_RERANK},
    "/classify_text": {
        "post": _operation(
            "Class probabilities and top labels per text.", "TextClasses", "ClassifyTextRequest"
        )
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
    "/model_info": {
        "get": _operation(
            "A model's towers, sizes, maximum length, prompts and calibration.",
            "ModelInfo",
            query=True,
        )
    },
    "/v1/embeddings": {
        "post": _operation(
            "OpenAI's embeddings API.", "OpenAIEmbeddings", "OpenAIEmbeddingRequest", openai=True
        )
    },
    "/v1/models": {
        "get": _operation("OpenAI's model list: the repository.", "OpenAIModels", openai=True)
    },
    "/v1/models/{model}": {
        "get": {
            **_operation("One model, in OpenAI's shape.", "OpenAIModel", openai=True),
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": NAME}],
        }
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

# Readiness answers 503 when not ready: the error names each model that is not, and why.
for _route in ("/ready", "/models/ready"):
    PATHS[_route]["get"]["responses"]["503"] = {
        "description": "Not ready: the error names each model that is not, and why.",
        **_json(_ref("Error")),
    }

# Serving s3:// engines: the model's current version could not be fetched (the error names the
# object); its previously fetched version keeps serving.
PATHS["/load_model"]["post"]["responses"]["502"] = {
    "description": "The object store failed or holds a broken version; the error names it.",
    **_json(_ref("Error")),
}

add_tei_paths(PATHS, SCHEMAS)

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "ingrain-server",
        "version": "1",
        "description": "Embedding and image-classification inference with the ingrain API. "
        'Keys are accepted in camelCase and snake_case. Errors are {"error": "..."}, except on '
        "the OpenAI-compatible /v1 routes, which answer in OpenAI's error shape.",
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
