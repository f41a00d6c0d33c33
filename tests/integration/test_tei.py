"""Text Embeddings Inference's API over real HTTP: huggingface_hub's InferenceClient and raw TEI
bodies against the real MiniLM, a tiny CrossEncoder and a tiny text classifier, checked against
sentence-transformers and transformers on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    MINILM,
    QUERY_PROMPT,
    RERANKER,
    SPLADE,
    TEXT_CLASSIFIER,
    TOKENS,
    assert_sparse_equal,
    cosines,
)
from tests.conftest import start_server as start
from tests.conftest import stop_server as stop
from tests.models import TEXT_LABELS

TEXTS = [
    "A man is playing a guitar on the street.",
    "Ünïcödé tëxt, 日本語のテキスト and emoji 🚀",
    "",
    "The quick brown fox jumps over the lazy dog. " * 60,  # past MiniLM's 256 tokens
]
QUERY = "how do cats sleep"
DOCUMENTS = ["Cats sleep up to sixteen hours a day.", "The stock market fell.", "Kittens nap."]
ERROR_TYPES = {"Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"}
MAX_ITEMS = 8


@pytest.fixture(scope="module")
def tei(tei_engines, tmp_path_factory):
    """One default model per kind; MiniLM (TOKENS) first, so it serves POST / and /info. The SPLADE
    model runs in f32 (bf16, which BF16 CPUs get by default, moves values near zero)."""
    log = tmp_path_factory.mktemp("tei") / "server.log"
    defaults = ("--default-model", TOKENS, "--default-model", RERANKER)
    defaults += ("--default-model", TEXT_CLASSIFIER, "--default-model", SPLADE)
    limits = ("--max-items", str(MAX_ITEMS), "--max-documents", "6")
    precision = ("--model-precision", f"{SPLADE}=f32")
    # MiniLM itself too (the ingrain routes' requests name it): the loaded set is these five.
    preload = ("--preload", MINILM)
    server = start(tei_engines, log, "--workers", "1", *preload, *defaults, *limits, *precision)
    yield server
    stop(server)


def embed_reference(reference, texts: list[str], normalize: bool = True) -> np.ndarray:
    return reference.encode(texts, normalize_embeddings=normalize, convert_to_numpy=True)


def test_feature_extraction_equals_sentence_transformers(tei, reference):
    client = InferenceClient(model=tei.url)
    served = np.concatenate([client.feature_extraction(text) for text in TEXTS])
    assert served.shape == (len(TEXTS), 384)
    assert cosines(served, embed_reference(reference, TEXTS)).min() >= 0.9999
    # The same through /embed with a batch: a list of lists, in order.
    answer = tei.post("/embed", {"inputs": TEXTS})
    assert answer.status_code == 200, answer.text
    assert cosines(np.array(answer.json()), served).min() >= 0.9999


def test_embed_options_follow_tei(tei, reference):
    raw = np.array(tei.post("/embed", {"inputs": TEXTS[:2], "normalize": False}).json())
    assert cosines(raw, embed_reference(reference, TEXTS[:2], False)).min() >= 0.9999
    cut = np.array(tei.post("/embed", {"inputs": TEXTS[0], "dimensions": 16}).json())
    assert cut.shape == (1, 16) and np.isclose(np.linalg.norm(cut), 1.0)
    prompted = np.array(tei.post("/embed", {"inputs": [QUERY], "prompt_name": "query"}).json())
    expected = embed_reference(reference, [QUERY_PROMPT + QUERY])
    assert cosines(prompted, expected).min() >= 0.9999
    # Token ids (one row, or rows among texts) embed like the text they encode.
    ids = reference.tokenizer(TEXTS[0])["input_ids"]
    one_row = np.array(tei.post("/embed", {"inputs": ids}).json())
    mixed = np.array(tei.post("/embed", {"inputs": [TEXTS[1], ids]}).json())
    expected = embed_reference(reference, TEXTS[:2])
    assert cosines(one_row, expected[:1]).min() >= 0.9999
    assert cosines(mixed, expected[::-1]).min() >= 0.9999
    # Truncation: left keeps the end of a long text.
    left = tei.post("/embed", {"inputs": TEXTS[3], "truncation_direction": "Left"})
    right = tei.post("/embed", {"inputs": TEXTS[3], "truncation_direction": "right"})
    assert left.status_code == right.status_code == 200
    long_text = "start " * 300 + " end of the story " * 30
    ends = [
        tei.post("/embed", {"inputs": long_text, "truncation_direction": side}).json()
        for side in ("left", "right")
    ]
    assert cosines(np.array(ends[0]), np.array(ends[1]))[0] < 0.99


def test_embed_all_equals_sentence_transformers_token_embeddings(tei, reference):
    texts = TEXTS[:3]
    answer = tei.post("/embed_all", {"inputs": texts})
    assert answer.status_code == 200, answer.text
    expected = reference.encode(texts, output_value="token_embeddings", convert_to_numpy=False)
    for served, tokens in zip(answer.json(), expected, strict=True):
        assert np.array(served).shape == tuple(tokens.shape)
        assert cosines(np.array(served), tokens.numpy()).min() >= 0.999
    ids = reference.tokenizer(texts[0])["input_ids"]
    [from_ids] = tei.post("/embed_all", {"inputs": ids}).json()
    assert cosines(np.array(from_ids), expected[0].numpy()).min() >= 0.999


def test_sentence_similarity_is_the_cosine_of_the_embeddings(tei, reference):
    client = InferenceClient(model=tei.url)
    scores = client.sentence_similarity(QUERY, other_sentences=DOCUMENTS)
    served = np.array(tei.post("/embed", {"inputs": [QUERY, *DOCUMENTS]}).json())
    np.testing.assert_allclose(scores, served[1:] @ served[0], atol=1e-6)
    # Within what the server's precision (bf16 where the CPU has it) keeps of each embedding.
    embeddings = embed_reference(reference, [QUERY, *DOCUMENTS])
    np.testing.assert_allclose(scores, embeddings[1:] @ embeddings[0], atol=5e-3)
    assert tei.post(
        "/similarity", {"inputs": {"source_sentence": QUERY, "sentences": DOCUMENTS}}
    ).json() == pytest.approx(scores, abs=1e-6)


def classifier_reference(pair_sources, texts, pairs=None):
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = pair_sources[TEXT_CLASSIFIER]
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = BertForSequenceClassification.from_pretrained(source).eval()
    encoded = tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded).logits.numpy()


def test_text_classification_equals_transformers(tei, pair_sources):
    """huggingface_hub posts to the URL it is given: /predict here (POST / serves MiniLM)."""
    client = InferenceClient(model=tei.url + "/predict")
    text = "I really enjoyed this film"
    top = client.text_classification(text)
    probabilities = torch.softmax(torch.tensor(classifier_reference(pair_sources, [text])), -1)[0]
    # TEI answers one input with one list; huggingface_hub reads its first (the top) element.
    assert top.label == TEXT_LABELS[int(probabilities.argmax())]
    assert top.score == pytest.approx(float(probabilities.max()), abs=1e-4)


def test_predict_shapes_and_scores(tei, pair_sources):
    single = tei.post("/predict", {"inputs": "good"}).json()
    assert [sorted(item) for item in single] == [["label", "score"]] * len(TEXT_LABELS)
    assert [item["score"] for item in single] == sorted(
        (item["score"] for item in single), reverse=True
    )
    pair = tei.post("/predict", {"inputs": ["good", "movie"], "raw_scores": True}).json()
    logits = classifier_reference(pair_sources, ["good"], ["movie"])[0]
    assert {item["label"]: item["score"] for item in pair} == pytest.approx(
        dict(zip(TEXT_LABELS, logits.tolist(), strict=True)), abs=1e-4
    )
    batch = tei.post("/predict", {"inputs": [["good"], ["good", "movie"], ["bad"]]}).json()
    assert len(batch) == 3 and all(len(row) == len(TEXT_LABELS) for row in batch)
    assert {item["label"]: item["score"] for item in batch[0]} == pytest.approx(
        {item["label"]: item["score"] for item in single}, abs=1e-6
    )
    expected = torch.softmax(torch.tensor(classifier_reference(pair_sources, ["bad"])), -1)[0]
    assert {item["label"]: item["score"] for item in batch[2]} == pytest.approx(
        dict(zip(TEXT_LABELS, expected.tolist(), strict=True)), abs=1e-4
    )


def test_rerank_equals_cross_encoder(tei, pair_sources):
    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(str(pair_sources[RERANKER]), device="cpu")
    expected = cross_encoder.predict([(QUERY, text) for text in DOCUMENTS])
    ranks = tei.post("/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    assert [rank["index"] for rank in ranks] == np.argsort(-expected, kind="stable").tolist()
    for rank in ranks:
        assert rank["score"] == pytest.approx(float(expected[rank["index"]]), abs=1e-4)
        assert rank["text"] == DOCUMENTS[rank["index"]]
    raw = tei.post("/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    logits = cross_encoder.predict(
        [(QUERY, text) for text in DOCUMENTS], activation_fn=torch.nn.Identity()
    )
    assert all("text" not in rank for rank in raw)
    assert {r["index"]: r["score"] for r in raw} == pytest.approx(
        dict(enumerate(logits.tolist())), abs=1e-4
    )


def test_tokenize_and_decode(tei, reference):
    text = "héllo wörld"
    [tokens] = tei.post("/tokenize", {"inputs": text}).json()
    encoding = reference.tokenizer(text)
    assert [token["id"] for token in tokens] == encoding["input_ids"]
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    data = text.encode()
    for token in tokens[1:-1]:  # byte offsets into the input, as TEI gives them
        assert data[token["start"] : token["stop"]].decode() == token["text"]
    plain = tei.post("/tokenize", {"inputs": [text, "a"], "add_special_tokens": False}).json()
    assert [len(row) for row in plain] == [len(tokens) - 2, 1]
    prompted = tei.post("/tokenize", {"inputs": "x", "prompt_name": "query"}).json()[0]
    assert "".join(t["text"] for t in prompted if not t["special"]) == "query:x"
    ids = encoding["input_ids"]
    assert tei.post("/decode", {"ids": ids}).json() == [
        reference.tokenizer.decode(ids, skip_special_tokens=True)
    ]
    both = tei.post("/decode", {"ids": [ids, ids], "skip_special_tokens": False}).json()
    assert both == [reference.tokenizer.decode(ids)] * 2


def test_info_describes_the_first_default_model(tei):
    info = requests.get(tei.url + "/info", timeout=10).json()
    assert info["model_id"] == info["served_model_name"] == TOKENS
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256 and info["max_client_batch_size"] == MAX_ITEMS
    assert info["auto_truncate"] is True
    required = {
        "model_dtype",
        "max_concurrent_requests",
        "max_batch_tokens",
        "tokenization_workers",
        "version",
    }
    assert required <= set(info)


def test_post_root_serves_the_models_task(tei, reference):
    embedded = tei.post("/", {"inputs": TEXTS[0]})
    assert cosines(np.array(embedded.json()), embed_reference(reference, TEXTS[:1]))[0] >= 0.9999
    similarity = tei.post("/", {"inputs": {"source_sentence": QUERY, "sentences": DOCUMENTS}})
    assert len(similarity.json()) == len(DOCUMENTS)
    ranks = tei.post("/", {"query": QUERY, "texts": DOCUMENTS})
    assert sorted(rank["index"] for rank in ranks.json()) == [0, 1, 2]


def test_ingrain_requests_on_shared_paths_are_unchanged(tei):
    ingrain = tei.post("/embed", {"name": MINILM, "text": ["a", "b"]})
    assert set(ingrain.json()) == {"textEmbeddings", "processingTimeMs"}
    ranked = tei.post("/rerank", {"name": RERANKER, "query": QUERY, "texts": DOCUMENTS})
    assert set(ranked.json()) == {"results", "processingTimeMs"}
    missing = tei.post("/embed", {"text": "a"})
    assert missing.status_code == 400 and set(missing.json()) == {"error"}  # the ingrain shape
    assert missing.json()["error"].startswith('"name" is required')
    # `inputs` is no field of TEI's /rerank: an ingrain body that carries one stays ingrain's.
    extra = tei.post("/rerank", {"name": RERANKER, "query": QUERY, "texts": DOCUMENTS, "inputs": 1})
    assert extra.status_code == 200 and extra.json()["results"] == ranked.json()["results"]


@pytest.mark.parametrize(
    ("route", "body", "status", "error_type", "says"),
    [
        ("/embed", {"inputs": []}, 400, "Empty", "cannot be empty"),
        ("/embed", {"inputs": {}}, 422, "Validation", "$.inputs"),
        ("/embed", {"inputs": [1, "a"]}, 422, "Validation", "inputs[0]"),
        ("/embed", {"inputs": [True]}, 422, "Validation", "$.inputs[0]"),
        ("/embed", {"inputs": [-1]}, 422, "Validation", ">= 0"),
        ("/embed", {"inputs": [[]]}, 422, "Validation", "empty list"),
        ("/embed", {"inputs": [10**9]}, 422, "Validation", "vocabulary"),
        ("/embed", {"inputs": ["a"] * (MAX_ITEMS + 1)}, 413, "Validation", "batch size 9"),
        ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "Validation", "$.normalize"),
        ("/embed", {"inputs": "a", "dimensions": 0}, 422, "Validation", "$.dimensions"),
        ("/embed", {"inputs": "a", "dimensions": 385}, 422, "Validation", "384"),
        ("/embed", {"inputs": "a", "truncation_direction": "up"}, 422, "Validation", "up"),
        ("/embed", {"inputs": "a", "prompt_name": "nope"}, 422, "Validation", "nope"),
        (
            "/embed",
            {"inputs": "a " * 300, "truncate": False},
            422,
            "Validation",
            "less than 256 tokens",
        ),
        ("/embed", {"inputs": "a", "name": MINILM}, 400, "Validation", "one API"),
        ("/embed_all", {"inputs": ["word " * 300] * 5}, 413, "Validation", "at most 1024"),
        ("/embed_all", {"inputs": []}, 400, "Empty", "cannot be empty"),
        ("/rerank", {"query": "q", "texts": []}, 400, "Empty", "`texts` cannot be empty"),
        ("/rerank", {"query": "q", "texts": ["a"] * 7}, 413, "Validation", "batch size 7"),
        ("/rerank", {"query": 1, "texts": ["a"]}, 422, "Validation", "$.query"),
        (
            "/rerank",
            {"query": "q", "texts": ["a"], "truncation_direction": "left"},
            422,
            "Validation",
            "truncates pairs",
        ),
        ("/predict", {"inputs": ["a", "b", "c"]}, 422, "Validation", "3 strings"),
        ("/predict", {"inputs": [["a", "b", "c"]]}, 422, "Validation", "inputs[0]"),
        ("/predict", {"inputs": []}, 422, "Validation", "empty"),
        ("/predict", {}, 422, "Validation", "inputs"),
        (  # the request's own place of the long text, which runs in the group of single texts
            "/predict",
            {"inputs": [["a", "b"], ["a " * 600]], "truncate": False},
            422,
            "Validation",
            "text 1 alone is longer",
        ),
        (
            "/similarity",
            {"inputs": {"source_sentence": "a", "sentences": []}},
            400,
            "Empty",
            "sentences",
        ),
        ("/similarity", {"inputs": "a"}, 422, "Validation", "$.inputs"),
        ("/tokenize", {"inputs": []}, 400, "Empty", "cannot be empty"),
        ("/tokenize", {"inputs": 5}, 422, "Validation", "$.inputs"),
        ("/decode", {"ids": [1, [2]]}, 422, "Validation", "mixes"),
        ("/decode", {"ids": [[10**9]]}, 422, "Validation", "vocabulary"),
        ("/decode", {"ids": "a"}, 422, "Validation", "$.ids"),
        ("/", {"inputs": 3}, 422, "Validation", "$.inputs"),
    ],
)
def test_malformed_bodies_get_a_tei_error(tei, route, body, status, error_type, says):
    answer = tei.post(route, body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert set(error) == {"error", "error_type"} and error["error_type"] == error_type
    assert says in error["error"]


def test_client_errors_raise_from_huggingface_hub(tei):
    client = InferenceClient(model=tei.url)
    with pytest.raises(HfHubHTTPError) as raised:
        client.feature_extraction("a " * 300, truncate=False)
    assert raised.value.response.status_code == 422


@pytest.fixture(scope="module")
def classifier_only(tei_engines, tmp_path_factory):
    """No --default-model: the only loaded model serves, and POST / is its task."""
    log = tmp_path_factory.mktemp("tei-one") / "server.log"
    server = start(tei_engines, log, "--workers", "1", "--preload", TEXT_CLASSIFIER)
    yield server
    stop(server)


def test_without_default_the_only_loaded_model_serves(classifier_only, pair_sources):
    client = InferenceClient(model=classifier_only.url)
    text = "what a day"
    top = client.text_classification(text)
    logits = classifier_reference(pair_sources, [text])[0]
    assert top.label == TEXT_LABELS[int(logits.argmax())]
    none = classifier_only.post("/embed", {"inputs": "a"})
    assert none.status_code == 400 and none.json()["error_type"] == "Validation"
    assert "--default-model" in none.json()["error"] and "none is loaded" in none.json()["error"]
    loaded = requests.post(
        classifier_only.model_url + "/load_model", json={"name": RERANKER}, timeout=120
    )
    assert loaded.ok, loaded.text
    several = classifier_only.post("/", {"inputs": text})
    assert several.status_code == 400 and "several are loaded" in several.json()["error"]
    assert RERANKER in several.json()["error"] and "--default-model" in several.json()["error"]
    # Routes of one kind still find the only model of that kind.
    assert classifier_only.post("/predict", {"inputs": text}).status_code == 200


def sparse_reference(splade_source, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(splade_source), device="cpu")
    encoded = model.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    return encoded.numpy()


def test_sparse_build_is_verified_against_sparse_encoder(tei_engines):
    from runtime.repository import Repository

    manifest = Repository(tei_engines).find(SPLADE).manifest
    assert (manifest.library, manifest.task) == ("sparse_encoder", "sparse-embedding")
    assert manifest.towers["text"].dim == 30522
    figures = manifest.build["verification"]["text"]
    assert figures["index_mismatches"] == 0 and figures["max_relative_error"] <= 1e-4


def test_embed_sparse_equals_sparse_encoder(tei, splade_source):
    answer = tei.post("/embed_sparse", {"inputs": TEXTS})
    assert answer.status_code == 200, answer.text
    expected = sparse_reference(splade_source, TEXTS)
    for row, reference_row in zip(answer.json(), expected, strict=True):
        assert all(set(entry) == {"index", "value"} for entry in row)
        indices = [entry["index"] for entry in row]
        assert_sparse_equal(indices, [entry["value"] for entry in row], reference_row)
        assert 10 < len(indices) < 5000  # sparse, as SPLADE is


def test_ingrain_sparse_output_and_top_k(tei, splade_source):
    answer = tei.post("/embed_text", {"name": SPLADE, "text": TEXTS[:2]})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"sparse", "processingTimeMs"}
    expected = sparse_reference(splade_source, TEXTS[:2])
    for vector, reference_row in zip(answer.json()["sparse"], expected, strict=True):
        assert_sparse_equal(vector["indices"], vector["values"], reference_row)
    pruned = tei.post("/embed_text", {"name": SPLADE, "text": TEXTS[:2], "topK": 5}).json()
    for vector, reference_row in zip(pruned["sparse"], expected, strict=True):
        largest = np.sort(np.argsort(-reference_row, kind="stable")[:5]).tolist()
        assert vector["indices"] == largest
    tei_pruned = tei.post("/embed_sparse", {"inputs": TEXTS[0], "top_k": 5}).json()
    assert [entry["index"] for entry in tei_pruned[0]] == pruned["sparse"][0]["indices"]


@pytest.mark.parametrize(
    ("route", "body", "says"),
    [
        ("/embed_text", {"name": SPLADE, "text": "a", "nDims": 8}, "dense"),
        ("/embed_text", {"name": SPLADE, "text": "a", "topK": 0}, "topK"),
        ("/embed", {"name": SPLADE, "text": "a"}, "sparse"),
        ("/v1/embeddings", {"model": SPLADE, "input": "a"}, "sparse"),
        ("/embed_text", {"name": MINILM, "text": "a", "topK": 3}, None),
    ],
)
def test_sparse_and_dense_requests_do_not_mix(tei, route, body, says):
    answer = tei.post(route, body)
    if says is None:  # topK means nothing to a dense model's /embed_text, as before
        assert answer.status_code == 200
        return
    assert answer.status_code == 400, answer.text
    assert says in str(answer.json()["error"])


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = (
    "inputs", "texts", "query", "ids", "normalize", "truncate", "truncation_direction",
    "prompt_name", "dimensions", "raw_scores", "return_text", "top_k", "parameters",
    "add_special_tokens", "skip_special_tokens",
)  # fmt: skip
ROUTES = (
    "/",
    "/embed",
    "/embed_all",
    "/embed_sparse",
    "/rerank",
    "/predict",
    "/similarity",
    "/tokenize",
    "/decode",
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(ROUTES),
    body=st.dictionaries(st.sampled_from(FIELDS), JSON, min_size=1, max_size=5),
)
def test_no_tei_body_gets_a_5xx(tei, route, body):
    answer = tei.post(route, body)
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert "error" in answer.json()


def test_default_model_flags_are_checked_before_serving(tei_engines):
    from click.testing import CliRunner

    from cli import serve_command

    engines = ("--engines", str(tei_engines))
    twice = ("--default-model", MINILM, "--default-model", MINILM)
    result = CliRunner().invoke(serve_command, [*engines, *twice])
    assert result.exit_code == 2 and "give one per kind" in result.output
    result = CliRunner().invoke(serve_command, [*engines, "--default-model", "nope"])
    assert result.exit_code == 1 and "ingrain-build nope" in result.output


def test_tokenize_answers_a_bounded_number_of_tokens(tei):
    """An object per token: /tokenize holds no more tokens than /embed reads in one request
    (--max-items inputs of the model's 256 tokens), whatever the characters allow."""
    limit = MAX_ITEMS * 256
    one_long = tei.post("/tokenize", {"inputs": "a " * 1000, "add_special_tokens": False})
    assert one_long.status_code == 200 and len(one_long.json()[0]) == 1000  # past 256: whole
    answer = tei.post("/tokenize", {"inputs": ["a " * 1500] * 2})
    assert answer.status_code == 413, answer.text
    assert answer.json()["error_type"] == "Validation"
    assert f"at most {limit}" in answer.json()["error"]


def test_one_sided_splade_serves_every_task_with_its_tower(tei, splade_source):
    """`task` picks a side of inference-free models (tests/test_tei_more.py); a SPLADE model
    of one side serves both with it, as SparseEncoder.encode_query / encode_document do."""
    expected = sparse_reference(splade_source, TEXTS[:2])
    for task in ("query", "document"):
        answer = tei.post("/embed_sparse", {"inputs": TEXTS[:2], "task": task})
        assert answer.status_code == 200, answer.text
        for row, reference_row in zip(answer.json(), expected, strict=True):
            indices = [entry["index"] for entry in row]
            assert_sparse_equal(indices, [entry["value"] for entry in row], reference_row)
