"""Inference-free SPLADE (built, verified and served on both sides against sentence-transformers'
SparseEncoder), TEI's /vertex, and TEI's error shape where a request fails before its route runs
(a missing key) or is too large. In-process (falcon's test client) but for huggingface_hub's
InferenceClient, which needs real HTTP."""

from __future__ import annotations

import json

import falcon.testing
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.routes.openapi import DOCUMENT
from api.settings import Limits, ServerSettings
from tests.conftest import EXACT, RERANKER, assert_sparse_equal, cosines
from tests.conftest import start_server as start
from tests.conftest import stop_server as stop

INFERENCE_FREE = "test/tiny-inference-free-splade"
EMBEDDER = "test/tiny-embedder"
KEY = "tei-more-key"
# e5-style prompts by task name: encode_query / encode_document use them, encode does not.
PROMPTS = {"query": "search_query: ", "document": "search_document: "}
TEXTS = [
    "what is deep learning?",
    "Ünïcödé tëxt, 日本語のテキスト and emoji 🚀",
    "",
    "The quick brown fox jumps over the lazy dog. " * 20,  # past the tokenizers' 64 tokens
]
MAX_ITEMS, MAX_DOCUMENTS, MAX_RERANK_CHARS = 4, 3, 300


@pytest.fixture(scope="module")
def sources(tmp_path_factory, minilm_source, pair_sources):
    from tests.models import tiny_inference_free_splade, tiny_sentence_transformer

    root = tmp_path_factory.mktemp("tei-more-sources")
    embedder, _ = tiny_sentence_transformer(root / "st", minilm_source, "mean", dense=False)
    return {
        INFERENCE_FREE: tiny_inference_free_splade(root / "splade", minilm_source),
        EMBEDDER: embedder,
        RERANKER: pair_sources[RERANKER],
    }


@pytest.fixture(scope="module")
def engines(tmp_path_factory, sources):
    from builder import BuildOptions, Progress, build_model

    root = tmp_path_factory.mktemp("tei-more-engines")
    quiet = Progress(quiet=True)
    prompts = BuildOptions(prompts=tuple(f"{name}={text}" for name, text in PROMPTS.items()))
    build_model(str(sources[INFERENCE_FREE]), root, INFERENCE_FREE, options=prompts, progress=quiet)
    for name in (EMBEDDER, RERANKER):
        build_model(str(sources[name]), root, name, progress=quiet)
    return root


def app(engines, *defaults: str, api_keys: tuple[str, ...] = (KEY,)) -> falcon.testing.TestClient:
    """The app in-process, in f32 on ONNX Runtime, with small limits and an API key."""
    settings = ServerSettings(
        engines=engines,
        runtime=EXACT,
        default_models=defaults,
        api_keys=api_keys,
        limits=Limits(
            max_items=MAX_ITEMS, max_documents=MAX_DOCUMENTS, max_rerank_chars=MAX_RERANK_CHARS
        ),
    )
    headers = {"Authorization": f"Bearer {KEY}"} if api_keys else {}
    return falcon.testing.TestClient(create_app(settings), headers=headers)


@pytest.fixture(scope="module")
def client(engines):
    return app(engines, EMBEDDER, RERANKER, INFERENCE_FREE)


@pytest.fixture(scope="module")
def reference(sources):
    from sentence_transformers import SparseEncoder

    return SparseEncoder(str(sources[INFERENCE_FREE]), device="cpu", prompts=PROMPTS)


def encoded(reference, texts: list[str], task: str | None) -> np.ndarray:
    """What SparseEncoder answers for `task`: encode, encode_query or encode_document."""
    method = {None: "encode", "query": "encode_query", "document": "encode_document"}[task]
    rows = getattr(reference, method)(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    return rows.numpy()


def test_inference_free_build_is_verified_on_both_sides(engines):
    from runtime.repository import Repository
    from runtime.repository.manifest import Manifest

    entry = Repository(engines).find(INFERENCE_FREE)
    manifest = entry.manifest
    assert (manifest.library, manifest.task) == ("sparse_encoder", "sparse-embedding")
    query = manifest.sparse_query
    assert query is not None and query.default_task == "document"
    assert {query.weights, query.tokenizer.file} <= manifest.named_files()
    assert np.load(entry.directory / query.weights).shape == (30522,)
    assert manifest.build["modules"] == {
        "query": ["SparseStaticEmbedding"],
        "document": ["MLMTransformer", "SpladePooling"],
    }
    for side in ("text", "query"):
        figures = manifest.build["verification"][side]
        assert figures["index_mismatches"] == 0 and figures["max_relative_error"] <= 1e-4
    assert manifest.build["verification"]["query"]["max_abs_error"] == 0  # a lookup: exact
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest


@pytest.mark.parametrize("task", [None, "query", "document"])
def test_each_side_equals_sparse_encoder(client, reference, task):
    """TEI's /embed_sparse and the ingrain /embed_text answer what encode (no task),
    encode_query and encode_document do, prompts included."""
    expected = encoded(reference, TEXTS, task)
    chosen = {} if task is None else {"task": task}
    tei = client.simulate_post("/embed_sparse", json={"inputs": TEXTS, **chosen})
    assert tei.status_code == 200, tei.text
    ingrain = client.simulate_post(
        "/embed_text", json={"name": INFERENCE_FREE, "text": TEXTS, **chosen}
    )
    assert ingrain.status_code == 200, ingrain.text
    for row, vector, reference_row in zip(tei.json, ingrain.json["sparse"], expected, strict=True):
        assert_sparse_equal([e["index"] for e in row], [e["value"] for e in row], reference_row)
        assert_sparse_equal(vector["indices"], vector["values"], reference_row)
    if task == "query":  # only the query's own tokens, at most the 64 the tokenizer keeps
        assert all(len(row) <= 64 for row in tei.json)


def test_query_side_options(client, reference, sources):
    from transformers import AutoTokenizer

    expected = encoded(reference, TEXTS[:2], "query")
    pruned = client.simulate_post(
        "/embed_sparse", json={"inputs": TEXTS[:2], "task": "query", "top_k": 3}
    )
    assert pruned.status_code == 200, pruned.text
    for row, reference_row in zip(pruned.json, expected, strict=True):
        largest = np.sort(np.argsort(-reference_row, kind="stable")[:3]).tolist()
        assert [entry["index"] for entry in row] == largest
    # Token ids are looked up as given (special tokens too), each distinct id once.
    weights = reference[0].sub_modules["query"][0].weight.detach().numpy()
    tokenizer = AutoTokenizer.from_pretrained(sources[INFERENCE_FREE] / "document_0_MLMTransformer")
    ids = tokenizer("a cat and a dog")["input_ids"]
    answer = client.simulate_post("/embed_sparse", json={"inputs": ids, "task": "query"}).json
    present = sorted(i for i in set(ids) if weights[i] != 0)
    assert [entry["index"] for entry in answer[0]] == present
    assert [entry["value"] for entry in answer[0]] == weights[present].tolist()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"inputs": TEXTS[3], "task": "query", "truncate": False}, 422, "less than 64 tokens"),
        ({"inputs": [[1, 10**6]], "task": "query"}, 422, "outside this model's vocabulary"),
        ({"inputs": "a", "task": "passage"}, 422, "$.task"),
        ({"inputs": ["a"] * (MAX_ITEMS + 1), "task": "query"}, 413, "batch size"),
        ({"inputs": "a", "task": "query", "prompt_name": "nope"}, 422, "prompt name"),
    ],
)
def test_query_side_refusals(client, body, status, says):
    answer = client.simulate_post("/embed_sparse", json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json) == {"error", "error_type"} and says in answer.json["error"]


def test_ingrain_task_refusal(client):
    answer = client.simulate_post(
        "/embed_text", json={"name": INFERENCE_FREE, "text": "a", "task": 1}
    )
    assert answer.status_code == 400 and "task" in answer.json["error"]


@pytest.mark.parametrize(
    ("first", "route", "instance"),
    [
        (EMBEDDER, "/embed", {"inputs": ["a cat", "a dog"], "normalize": False}),
        (INFERENCE_FREE, "/embed_sparse", {"inputs": "a cat", "task": "query"}),
        (RERANKER, "/predict", {"inputs": [["a cat", "a dog"], ["a fish"]]}),
    ],
)
def test_vertex_answers_as_the_routes_tei_sends_instances_to(engines, first, route, instance):
    """Instances that are rerank bodies go to /rerank; the others to the served model's own
    route (TEI's vertex_compatibility): each prediction is that route's answer."""
    others = [name for name in (EMBEDDER, RERANKER, INFERENCE_FREE) if name != first]
    served = app(engines, first, *others)
    rerank = {"query": "a pet", "texts": ["a cat", "stocks fell"], "return_text": True}
    answer = served.simulate_post("/vertex", json={"instances": [instance, rerank, instance]})
    assert answer.status_code == 200, answer.text
    expected = served.simulate_post(route, json=instance).json
    ranked = served.simulate_post("/rerank", json=rerank).json
    assert answer.json == {"predictions": [expected, ranked, expected]}


@pytest.mark.parametrize(
    ("instances", "status", "error_type", "says"),
    [
        ([{"inputs": ["a"] * 3}, {"inputs": ["b"] * 2}], 413, "Validation", "batch size 5 > "),
        ([{"query": "q", "texts": ["a", "b"]}] * 2, 413, "Validation", "batch size 4 > "),
        ([{"inputs": "a"}, {"inputs": []}], 400, "Empty", "`instances[1]`: `inputs` cannot"),
        ([{"inputs": "a", "dimensions": 10**6}], 422, "Validation", "`instances[0]`: `dim"),
        (["a cat"], 422, "Validation", "`instances[0]` is not a JSON object"),
        ({"inputs": "a"}, 422, "Validation", "$.instances"),
    ],
)
def test_vertex_refusals(client, instances, status, error_type, says):
    answer = client.simulate_post("/vertex", json={"instances": instances})
    assert answer.status_code == status, answer.text
    assert answer.json["error_type"] == error_type and says in answer.json["error"]


def test_vertex_without_instances_predicts_nothing(client):
    answer = client.simulate_post("/vertex", json={"instances": []})
    assert answer.status_code == 200 and answer.json == {"predictions": []}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
INSTANCE = st.dictionaries(
    st.sampled_from(["inputs", "query", "texts", "task", "top_k", "truncate", "normalize"]), JSON
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(instances=st.lists(INSTANCE | JSON, max_size=4))
def test_no_vertex_body_gets_a_5xx(client, instances):
    answer = client.simulate_post("/vertex", json={"instances": instances})
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert set(answer.json) == {"error", "error_type"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/embed_sparse"),
        ("POST", "/embed_all"),
        ("POST", "/predict"),
        ("POST", "/similarity"),
        ("POST", "/tokenize"),
        ("POST", "/decode"),
        ("POST", "/vertex"),
        ("POST", "/"),
        ("GET", "/info"),
    ],
)
def test_missing_key_on_tei_routes_is_in_tei_shape(engines, method, path):
    keyless = falcon.testing.TestClient(app(engines, EMBEDDER).app)
    answer = keyless.simulate_request(method, path, json={"inputs": "a"})
    assert answer.status_code == 401
    assert answer.json["error_type"] == "Validation" and "API key" in answer.json["error"]
    documented = DOCUMENT["paths"][path][method.lower()]["responses"]["401"]
    assert documented["content"]["application/json"]["schema"]["$ref"].endswith("TEIErrorResponse")


@pytest.mark.parametrize("body", [{"inputs": "a"}, {"name": EMBEDDER, "text": "a"}])
def test_missing_key_on_shared_paths_keeps_the_ingrain_shape(engines, body):
    """/embed and /rerank learn the API from the body, which is not read without a key."""
    keyless = falcon.testing.TestClient(app(engines, EMBEDDER).app)
    for path in ("/embed", "/rerank"):
        answer = keyless.simulate_post(path, json=body)
        assert answer.status_code == 401 and set(answer.json) == {"error"}


def test_rerank_past_max_rerank_chars_is_413_on_both_apis(client):
    texts = ["x" * 100] * 3  # 300 characters, and the query's
    tei = client.simulate_post("/rerank", json={"query": "q", "texts": texts})
    assert tei.status_code == 413, tei.text
    assert tei.json["error_type"] == "Validation" and "--max-rerank-chars" in tei.json["error"]
    ingrain = client.simulate_post("/rerank", json={"name": RERANKER, "query": "q", "texts": texts})
    assert ingrain.status_code == 413 and set(ingrain.json) == {"error"}


@pytest.fixture(scope="module")
def keyed_server(engines, tmp_path_factory):
    log = tmp_path_factory.mktemp("tei-more") / "server.log"
    server = start(engines, log, "--workers", "1", "--api-key", KEY, "--default-model", EMBEDDER)
    yield server
    stop(server)


def test_huggingface_hub_sees_tei_errors_and_answers(keyed_server, sources):
    from sentence_transformers import SentenceTransformer

    with pytest.raises(HfHubHTTPError) as raised:
        InferenceClient(model=keyed_server.url + "/predict").text_classification("a")
    assert raised.value.response.status_code == 401
    assert raised.value.response.json()["error_type"] == "Validation"
    client = InferenceClient(model=keyed_server.url, token=KEY)
    served = client.feature_extraction(TEXTS[0])
    expected = SentenceTransformer(str(sources[EMBEDDER]), device="cpu").encode(
        [TEXTS[0]], normalize_embeddings=True
    )
    assert cosines(served, expected).min() >= 0.9999


def test_a_broken_query_lookup_fails_the_load(engines, tmp_path):
    import shutil

    from runtime.errors import ModelLoadError
    from runtime.models import Model
    from runtime.repository import Entry, Repository

    entry = Repository(engines).find(INFERENCE_FREE)
    copy = tmp_path / "engine"
    shutil.copytree(entry.directory, copy)
    (copy / "query_weights.npy").write_bytes(b"\x93NUMPY not an array")
    with pytest.raises(ModelLoadError, match=r"query_weights\.npy"):
        Model.load(Entry(copy, entry.manifest), EXACT)
