"""Real answers of every route validate against the published OpenAPI document: each request
below is served in-process by the app (falcon's test client, real models), and its answer is
checked against the schema the document gives for that route, method and status."""

from __future__ import annotations

import base64

import falcon.testing
import pytest

from api.app import create_app
from api.routes.openapi import DOCUMENT
from api.settings import ServerSettings
from builder.verify import verification_images
from runtime.batching import BatchingConfig
from runtime.config import RuntimeConfig
from tests.conftest import (
    CLIP,
    MINILM,
    RERANKER,
    SPLADE,
    TEXT_CLASSIFIER,
    TIMM,
    TOKENS,
    assert_documented,
    copy_tree,
)

IMAGE = base64.b64encode(verification_images()[0]).decode()
TEXTS = ["a cat sleeps on the sofa", "stock markets fell"]
QUERY = "where do cats sleep"
TEI_DEFAULTS = (TOKENS, RERANKER, TEXT_CLASSIFIER, SPLADE)

# (method, route as the document names it, path sent, JSON body) in an order that works:
# models are loaded before use, unloaded and deleted at the end.
CALLS = [
    ("get", "/health", "/health", None),
    ("head", "/health", "/health", None),
    *(("post", "/load_model", "/load_model", {"name": name}) for name in (MINILM, CLIP, TIMM)),
    ("post", "/load_model", "/load_model", {"name": RERANKER, "library": "cross_encoder"}),
    ("post", "/load_model", "/load_model", {"name": TEXT_CLASSIFIER}),
    ("post", "/embed_text", "/embed_text", {"name": MINILM, "text": TEXTS, "n_dims": 64}),
    ("post", "/embed_text", "/embed_text", {"name": MINILM, "text": "a", "precision": "int8"}),
    ("post", "/embed_text", "/embed_text", {"name": MINILM, "text": ["a", 3]}),
    ("post", "/embed_image", "/embed_image", {"name": CLIP, "image": IMAGE, "nDims": 8}),
    ("post", "/embed", "/embed", {"name": CLIP, "text": TEXTS, "image": [IMAGE]}),
    ("post", "/infer", "/infer", {"name": CLIP, "text": "a photo of a cat"}),
    ("post", "/classify_image", "/classify_image", {"name": TIMM, "image": IMAGE}),
    ("post", "/classify_image", "/classify_image", {"name": "no/such-model", "image": IMAGE}),
    (
        "post",
        "/rerank",
        "/rerank",
        {"name": RERANKER, "query": QUERY, "texts": TEXTS, "returnText": True, "top_n": 1},
    ),
    ("post", "/rerank", "/rerank", {"name": CLIP, "query": QUERY, "images": [IMAGE, IMAGE]}),
    (
        "post",
        "/v1/rerank",
        "/v1/rerank",
        {"model": RERANKER, "query": QUERY, "documents": [TEXTS[0], {"text": TEXTS[1]}]},
    ),
    (
        "post",
        "/v2/rerank",
        "/v2/rerank",
        {"model": RERANKER, "query": QUERY, "documents": TEXTS, "return_documents": True},
    ),
    ("post", "/v2/rerank", "/v2/rerank", {"model": 7, "query": QUERY, "documents": TEXTS}),
    ("post", "/classify_text", "/classify_text", {"name": TEXT_CLASSIFIER, "text": TEXTS}),
    ("post", "/classify_text", "/classify_text", {"name": TEXT_CLASSIFIER, "text": "a", "topK": 1}),
    # Text Embeddings Inference's API, served by the default models (TEI_DEFAULTS).
    *(("post", "/load_model", "/load_model", {"name": name}) for name in (TOKENS, SPLADE)),
    ("post", "/embed", "/embed", {"inputs": TEXTS, "dimensions": 8}),
    ("post", "/embed", "/embed", {"inputs": []}),
    ("post", "/embed", "/embed", {"inputs": "a", "name": MINILM}),
    ("post", "/embed_all", "/embed_all", {"inputs": TEXTS}),
    ("post", "/embed_all", "/embed_all", {"inputs": ["word " * 300] * 5}),
    ("post", "/embed_sparse", "/embed_sparse", {"inputs": TEXTS, "top_k": 5}),
    ("post", "/embed_text", "/embed_text", {"name": SPLADE, "text": TEXTS, "topK": 5}),
    ("post", "/rerank", "/rerank", {"query": QUERY, "texts": TEXTS, "return_text": True}),
    ("post", "/predict", "/predict", {"inputs": TEXTS[0]}),
    ("post", "/predict", "/predict", {"inputs": [[TEXTS[0]], [QUERY, TEXTS[1]]]}),
    ("post", "/predict", "/predict", {"inputs": ["a", "b", "c"]}),
    (
        "post",
        "/similarity",
        "/similarity",
        {"inputs": {"source_sentence": QUERY, "sentences": TEXTS}},
    ),
    ("post", "/tokenize", "/tokenize", {"inputs": TEXTS}),
    ("post", "/decode", "/decode", {"ids": [[101, 7592, 102]]}),
    ("post", "/decode", "/decode", {"ids": "a"}),
    ("get", "/info", "/info", None),
    ("post", "/", "/", {"inputs": TEXTS[0]}),
    ("post", "/", "/", {"query": QUERY, "texts": TEXTS}),
    ("post", "/", "/", {"inputs": {"source_sentence": QUERY, "sentences": TEXTS}}),
    (
        "post",
        "/vertex",
        "/vertex",
        {"instances": [{"inputs": TEXTS}, {"query": QUERY, "texts": TEXTS}]},
    ),
    ("post", "/vertex", "/vertex", {"instances": [{"inputs": "a"}, {"inputs": []}]}),
    ("get", "/metrics", "/metrics", None),
    ("get", "/metrics/prometheus", "/metrics/prometheus", None),
    ("get", "/model_embedding_size", f"/model_embedding_size?name={MINILM}", None),
    ("get", "/model_info", f"/model_info?name={MINILM}", None),
    ("get", "/model_classification_labels", f"/model_classification_labels?name={TIMM}", None),
    ("post", "/v1/embeddings", "/v1/embeddings", {"model": MINILM, "input": TEXTS}),
    (
        "post",
        "/v1/embeddings",
        "/v1/embeddings",
        {"model": MINILM, "input": [[101, 102]], "encoding_format": "base64", "dimensions": 8},
    ),
    ("post", "/v1/embeddings", "/v1/embeddings", {"model": MINILM, "input": []}),
    ("get", "/v1/models", "/v1/models", None),
    ("get", "/v1/models/{model}", f"/v1/models/{MINILM}", None),
    ("get", "/v1/models/{model}", "/v1/models/no/such-model", None),
    ("get", "/loaded_models", "/loaded_models", None),
    ("get", "/ready", "/ready", None),
    ("get", "/models/ready", f"/models/ready?name={MINILM}", None),
    ("get", "/repository_models", "/repository_models", None),
    ("get", "/openapi.json", "/openapi.json", None),
    *(
        (method, route, path, None)
        for route, path in (
            ("/", "/"),
            ("/playground", "/playground"),
            ("/docs", "/docs"),
            ("/pages/{file}", "/pages/playground.mjs"),
        )
        for method in ("get", "head")
    ),
    ("get", "/pages/{file}", "/pages/no-such-file.js", None),
    ("post", "/unload_model", "/unload_model", {"name": TEXT_CLASSIFIER}),
    ("get", "/models/ready", f"/models/ready?name={TEXT_CLASSIFIER}", None),
    ("delete", "/delete_model", "/delete_model", {"name": TEXT_CLASSIFIER}),
]


@pytest.fixture(scope="module")
def client(tei_engines, tmp_path_factory) -> falcon.testing.TestClient:
    """The app on a copy of `tei_engines` (a model is deleted), TEI's routes served by
    TEI_DEFAULTS, with a small token budget."""
    root = tmp_path_factory.mktemp("conformance")
    copy_tree(tei_engines, root / "engines")
    # Pinned: `auto` would measure every tower first (its answers are checked against the
    # document in tests/integration/test_backend_choice_served.py).
    runtime = RuntimeConfig(
        backend="onnxruntime", precision="f32", batching=BatchingConfig(max_tokens=1024)
    )
    settings = ServerSettings(
        engines=root / "engines",
        runtime=runtime,
        default_models=TEI_DEFAULTS,
        loaded_set=root / "loaded.json",
        max_loaded_models=10,
    )
    return falcon.testing.TestClient(create_app(settings))


def test_every_route_answers_as_the_document_says(client):
    called, statuses, succeeded = set(), set(), set()
    for method, route, path, body in CALLS:
        path, _, query = path.partition("?")
        answer = client.simulate_request(method.upper(), path, query_string=query, json=body)
        is_json = answer.headers.get("content-type", "").startswith("application/json")
        assert_documented(route, method, answer.status_code, answer.json if is_json else None)
        called.add((route, method))
        statuses.add(answer.status_code)
        if answer.status_code == 200:
            succeeded.add((route, method))
    routes = {(route, method) for route, item in DOCUMENT["paths"].items() for method in item}
    assert called == routes
    assert succeeded == routes  # every route's success was checked, not only its refusals
    # Refusals in the ingrain, OpenAI and TEI error shapes were checked too.
    assert {200, 400, 404, 413, 422, 503} <= statuses
