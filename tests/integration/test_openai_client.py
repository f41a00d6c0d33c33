"""The official `openai` client, unchanged, against real ingrain-serve: embeddings equal
/embed_text's, in both encodings, with dimensions, for 100 inputs; its typed errors for a wrong
key and an unknown model; and errors in OpenAI's shape on every /v1 failure."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
import requests

from tests.conftest import CLIP, MINILM, start_server, stop_server

KEY = "test-key"
TEXTS = ["a cat", "The quick brown fox jumps over the lazy dog.", "日本語のテキスト 🚀"]


@pytest.fixture(scope="module")
def keyed(engines, tmp_path_factory):
    """A server with an API key and room for 100 inputs per request."""
    log = tmp_path_factory.mktemp("openai") / "server.log"
    flags = ("--api-key", KEY, "--max-items", "128", "--max-loaded-models", "10")
    running = start_server(engines, log, *flags)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def client(keyed) -> openai.OpenAI:
    return openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)


def embed_text(server, texts, **options) -> np.ndarray:
    response = requests.post(
        server.url + "/embed_text",
        json={"name": MINILM, "text": texts, **options},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.array(response.json()["embeddings"], dtype=np.float32)


def decoded(embedding: list[float] | str) -> np.ndarray:
    """An embedding as floats; the client leaves base64 undecoded when it was asked for."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.array(embedding, dtype=np.float32)


def vectors(result) -> np.ndarray:
    assert [item.index for item in result.data] == list(range(len(result.data)))
    return np.stack([decoded(item.embedding) for item in result.data])


def test_default_base64_encoding_equals_embed_text(client, keyed):
    result = client.embeddings.create(model=MINILM, input=TEXTS)
    assert result.model == MINILM and result.object == "list"
    assert np.abs(vectors(result) - embed_text(keyed, TEXTS)).max() <= 1e-6
    assert result.usage.prompt_tokens == result.usage.total_tokens > len(TEXTS)


def test_float_encoding_equals_embed_text(client, keyed):
    result = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert np.abs(vectors(result) - embed_text(keyed, TEXTS)).max() <= 1e-6


def test_base64_is_little_endian_float32(keyed):
    body = {"model": MINILM, "input": "a cat", "encoding_format": "base64"}
    headers = {"Authorization": f"Bearer {KEY}"}
    response = requests.post(keyed.url + "/v1/embeddings", json=body, headers=headers, timeout=60)
    encoded = response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert np.abs(decoded(encoded) - embed_text(keyed, ["a cat"])[0]).max() <= 1e-6


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_dimensions_truncate_then_renormalise(client, keyed, encoding):
    result = client.embeddings.create(
        model=MINILM, input=TEXTS, dimensions=128, encoding_format=encoding
    )
    served = vectors(result)
    assert served.shape == (3, 128)
    assert np.abs(served - embed_text(keyed, TEXTS, nDims=128)).max() <= 1e-6
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-6)


def test_a_batch_of_100(client, keyed):
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(100)]
    served = vectors(client.embeddings.create(model=MINILM, input=texts))
    assert served.shape == (100, 384)
    expected = np.concatenate([embed_text(keyed, texts[:50]), embed_text(keyed, texts[50:])])
    assert np.abs(served - expected).max() <= 1e-6


def test_token_ids_equal_their_text(client, keyed, reference):
    ids = reference.tokenizer(TEXTS)["input_ids"]
    from_ids = vectors(client.embeddings.create(model=MINILM, input=ids))
    single = vectors(client.embeddings.create(model=MINILM, input=ids[0]))
    expected = embed_text(keyed, TEXTS)
    assert np.abs(from_ids - expected).max() <= 1e-5
    assert np.abs(single[0] - expected[0]).max() <= 1e-5


@pytest.mark.parametrize("direction", ["right", "left"])
def test_over_long_token_ids_are_cut_like_their_text(client, keyed, reference, direction):
    """Token ids past the maximum keep [CLS] and [SEP] at the ends, as the tokenizer's own
    truncation of the same text does: the same embedding."""
    text = " ".join(f"word{i}" for i in range(400))
    ids = reference.tokenizer([text])["input_ids"]  # untruncated: [CLS] ... [SEP]
    assert len(ids[0]) > 256
    options = {"truncation_direction": direction}
    from_ids = vectors(client.embeddings.create(model=MINILM, input=ids, extra_body=options))
    expected = vectors(client.embeddings.create(model=MINILM, input=text, extra_body=options))
    assert np.abs(from_ids - expected).max() <= 1e-5


def test_usage_counts_tokens_after_truncation(client):
    result = client.embeddings.create(model=MINILM, input="word " * 1000)
    assert result.usage.prompt_tokens == 256


def test_clip_models_embed_text(client, keyed):
    result = client.embeddings.create(model=CLIP, input=TEXTS)
    response = requests.post(
        keyed.url + "/embed_text",
        json={"name": CLIP, "text": TEXTS},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert np.abs(vectors(result) - np.array(response.json()["embeddings"])).max() <= 1e-6


def test_models_list_and_retrieve_with_a_slash_in_the_id(client, engines):
    listed = client.models.list()
    ids = [model.id for model in listed.data]
    assert MINILM in ids and CLIP in ids
    model = client.models.retrieve(MINILM)
    assert model.id == MINILM and model.object == "model" and model.created > 0


def test_wrong_key_is_an_authentication_error(keyed):
    wrong = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.embeddings.create(model=MINILM, input="a cat")
    assert raised.value.status_code == 401
    assert raised.value.body["code"] == "invalid_api_key"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="no/such-model", input="a cat")
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no/such-model")


def test_out_of_range_dimensions_name_the_param(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MINILM, input="a cat", dimensions=385)
    assert raised.value.body["param"] == "dimensions"
    assert "384" in raised.value.body["message"]


def test_token_id_outside_the_vocabulary_names_its_index(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MINILM, input=[[101, 102], [101, 30522, 102]])
    assert raised.value.body["param"] == "input"
    assert "input[1]" in raised.value.body["message"]
    assert "30522" in raised.value.body["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"truncate": "yes"}, "truncate"),
        ({"truncation_direction": "up"}, "truncation_direction"),
        ({"prompt": 5}, "prompt"),
        ({"prompt_name": "no-such-prompt"}, "prompt_name"),
        ({"prompt": "a", "prompt_name": "query"}, "prompt_name"),
    ],
)
def test_bad_text_options_name_the_param(client, extra, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MINILM, input="a cat", extra_body=extra)
    assert raised.value.body["param"] == param


def test_truncate_false_on_a_long_input_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(
            model=MINILM, input=["short", "word " * 1000], extra_body={"truncate": False}
        )
    body = raised.value.body
    assert body["code"] == "context_length_exceeded"
    assert "[1]" in body["message"] and "1002 tokens" in body["message"]
    assert "256" in body["message"]


def test_prompt_name_on_the_openai_route(client, keyed):
    result = client.embeddings.create(
        model=MINILM, input=TEXTS, extra_body={"prompt_name": "query"}
    )
    expected = embed_text(keyed, TEXTS, promptName="query")
    assert np.abs(vectors(result) - expected).max() <= 1e-6


@pytest.mark.parametrize(
    ("route", "body", "status"),
    [
        ("/v1/embeddings", {"model": MINILM}, 400),
        ("/v1/embeddings", {"model": MINILM, "input": []}, 400),
        ("/v1/embeddings", {"model": MINILM, "input": "x", "encoding_format": "int8"}, 400),
        ("/v1/embeddings", {"model": MINILM, "input": ["x"] * 129}, 413),
        ("/v1/chat/completions", {"model": MINILM}, 404),
    ],
)
def test_errors_come_in_openais_shape(keyed, route, body, status):
    headers = {"Authorization": f"Bearer {KEY}"}
    response = requests.post(keyed.url + route, json=body, headers=headers, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_non_json_and_missing_keys_in_openais_shape(keyed):
    response = requests.post(
        keyed.url + "/v1/embeddings",
        data=b"\x89PNG",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "image/png"},
        timeout=30,
    )
    assert response.status_code == 415 and "message" in response.json()["error"]
    response = requests.get(keyed.url + "/v1/models", timeout=30)
    assert response.status_code == 401 and response.json()["error"]["type"]


def test_other_routes_keep_their_error_shape(keyed):
    response = requests.post(keyed.url + "/embed_text", json={"name": MINILM}, timeout=30)
    assert response.status_code == 401 and isinstance(response.json()["error"], str)


def test_an_over_long_model_path_is_refused_in_openais_shape(keyed):
    """Past gunicorn's default request line (4094 bytes) the app still answers, naming `model`."""
    headers = {"Authorization": f"Bearer {KEY}"}
    response = requests.get(keyed.url + "/v1/models/" + "m" * 5000, headers=headers, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and "longer than 512" in error["message"]
