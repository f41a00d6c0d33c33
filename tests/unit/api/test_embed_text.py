"""/embed_text and every bad-input case, in-process (falcon's test client), against
sentence-transformers on the same weights."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
from falcon.testing import Result, TestClient

from tests.conftest import MINILM, cosines


def embed_text(app: TestClient, body: dict) -> Result:
    return app.simulate_post("/embed_text", json=body)


TEXTS = ["a cat", "a dog", "The quick brown fox jumps over the lazy dog.", "日本語のテキスト 🚀"]


def test_health(app):
    response = app.simulate_get("/health")
    assert response.status_code == 200
    assert response.json == {"message": "The inference server is running."}


def test_embed_text_list_matches_sentence_transformers(app, reference):
    response = embed_text(app, {"name": MINILM, "text": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json
    assert set(body) == {"embeddings", "processingTimeMs"}
    assert body["processingTimeMs"] > 0
    served = np.array(body["embeddings"])
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    assert served.shape == (4, 384)
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert cosines(served, expected).min() >= 0.9999
    assert np.abs(served - expected).max() < 1e-4


def test_embed_text_single_string_is_a_batch_of_one(app, reference):
    response = embed_text(app, {"name": MINILM, "text": "a cat"})
    served = np.array(response.json["embeddings"])
    assert served.shape == (1, 384)
    assert cosines(served, reference.encode(["a cat"])).min() >= 0.9999


@pytest.mark.parametrize("key", ["nDims", "n_dims"])
def test_n_dims_truncates_then_normalises(app, reference, key):
    response = embed_text(app, {"name": MINILM, "text": TEXTS, key: 128})
    served = np.array(response.json["embeddings"])
    full = reference.encode(TEXTS, normalize_embeddings=False)[:, :128]
    expected = full / np.linalg.norm(full, axis=1, keepdims=True)
    assert served.shape == (4, 128)
    assert np.abs(served - expected).max() < 1e-4


def test_normalize_false_returns_the_models_own_output(app, reference):
    response = embed_text(app, {"name": MINILM, "text": TEXTS, "normalize": False})
    served = np.array(response.json["embeddings"])
    expected = reference.encode(TEXTS, normalize_embeddings=False)
    assert np.abs(served - expected).max() < 1e-4


def test_normalize_false_with_n_dims_is_a_plain_truncation(app, reference):
    body = {"name": MINILM, "text": TEXTS, "normalize": False, "nDims": 16}
    served = np.array(embed_text(app, body).json["embeddings"])
    expected = reference.encode(TEXTS, normalize_embeddings=False)[:, :16]
    assert np.abs(served - expected).max() < 1e-4
    assert not np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-3)


def test_texts_past_the_max_length_are_truncated_like_sentence_transformers(app, reference):
    long_text = "streaming data pipelines " * 400
    served = np.array(embed_text(app, {"name": MINILM, "text": long_text}).json["embeddings"])
    assert cosines(served, reference.encode([long_text])).min() >= 0.9999


def test_empty_strings_are_embedded(app, reference):
    served = np.array(embed_text(app, {"name": MINILM, "text": ["", " "]}).json["embeddings"])
    assert cosines(served, reference.encode(["", " "])).min() >= 0.9999


def test_concurrent_requests_get_their_own_answers(app, reference):
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(24)]
    expected = reference.encode(texts, normalize_embeddings=True)

    def embed(index: int) -> np.ndarray:
        response = embed_text(app, {"name": MINILM, "text": texts[index]})
        return np.array(response.json["embeddings"][0])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        served = np.stack(list(pool.map(embed, range(len(texts)))))
    assert cosines(served, expected).min() >= 0.9999


BAD_REQUESTS = [
    # (body bytes, status, words the error must contain)
    (b"not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "JSON object"),
    (b'"text"', 400, "JSON object"),
    (b'{"text": "a"}', 400, '"name" is required'),
    (b'{"name": "' + MINILM.encode() + b'"}', 400, '"text" is required'),
    (b'{"name": 5, "text": "a"}', 400, '"name" must be'),
    (b'{"name": "", "text": "a"}', 400, '"name" must be'),
    (b'{"name": "' + MINILM.encode() + b'", "text": 5}', 400, "string or a list"),
    (b'{"name": "' + MINILM.encode() + b'", "text": {"a": 1}}', 400, "string or a list"),
    (b'{"name": "' + MINILM.encode() + b'", "text": []}', 400, "empty list"),
    (b'{"name": "' + MINILM.encode() + b'", "text": ["a", null]}', 400, '"text"[1]'),
    (b'{"name": "' + MINILM.encode() + b'", "text": ["a", 3]}', 400, '"text"[1]'),
    (b'{"name": "' + MINILM.encode() + b'", "text": "a", "normalize": "yes"}', 400, "normalize"),
    (b'{"name": "' + MINILM.encode() + b'", "text": "a", "nDims": "8"}', 400, "nDims"),
    (b'{"name": "' + MINILM.encode() + b'", "text": "a", "nDims": 8.5}', 400, "nDims"),
    (b'{"name": "' + MINILM.encode() + b'", "text": "a", "nDims": true}', 400, "nDims"),
    (b'{"name": "' + MINILM.encode() + b'", "text": "a", "nDims": 0}', 400, "between 1 and 384"),
    (b'{"name": "' + MINILM.encode() + b'", "text": "a", "nDims": 385}', 400, "between 1 and 384"),
    (b'{"name": "' + MINILM.encode() + b'", "text": "a", "n_dims": -1}', 400, "between 1 and 384"),
    (b'{"name": "' + MINILM.encode() + b'", "text": NaN}', 400, "not valid JSON"),
    (b'{"name": "' + MINILM.encode() + b'", "text": "\\ud800"}', 400, "not valid JSON"),
    (b"[" * 5000 + b"]" * 5000, 400, "not valid JSON"),
    (b'{"name": "no/such-model", "text": "a"}', 404, "ingrain-build no/such-model"),
    (b'{"name": "../../etc/passwd", "text": "a"}', 404, "not in the engine repository"),
    (b'{"name": "' + b"x" * 600 + b'", "text": "a"}', 400, "longer than 512"),
    (
        b'{"name": "' + MINILM.encode() + b'", "text": [' + b'"a",' * 64 + b'"a"]}',
        413,
        "limit is 64",
    ),
    (
        b'{"name": "' + MINILM.encode() + b'", "text": "' + b"a" * 20001 + b'"}',
        413,
        "limit is 20000",
    ),
    (
        b'{"name": "' + MINILM.encode() + b'", "text": "' + b"a" * 200001 + b'"}',
        413,
        "larger than 200000 bytes",
    ),
]


@pytest.mark.parametrize(("raw", "status", "words"), BAD_REQUESTS)
def test_bad_input_is_a_clear_4xx(app, raw, status, words):
    response = app.simulate_post("/embed_text", body=raw)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert words in response.json["error"]


def test_non_json_content_type_is_415(app):
    response = app.simulate_post(
        "/embed_text", body=b"<xml/>", headers={"Content-Type": "application/xml"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json["error"]


def test_unknown_route_and_wrong_method_answer_json(app):
    missing = app.simulate_get("/no_such_route")
    assert missing.status_code == 404
    assert "no route GET /no_such_route" in missing.json["error"]
    wrong = app.simulate_get("/embed_text")
    assert wrong.status_code == 405
    assert "POST" in wrong.json["error"]
