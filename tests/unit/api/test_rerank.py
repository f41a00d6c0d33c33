"""Cross-encoders, text classifiers and ranking with embedding models, in-process (falcon's test
client): a tiny CrossEncoder and a 3-label BertForSequenceClassification built with the real
builder, checked against sentence-transformers and transformers themselves."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from falcon.testing import TestClient

from runtime.repository import Repository
from runtime.repository.manifest import Manifest
from tests.conftest import (
    CLIP,
    MINILM,
    RERANKER,
    TEXT_CLASSIFIER,
    TIMM,
    cosines,
    serve_in_process,
)
from tests.images import png
from tests.models import TEXT_LABELS, put_in_hub_cache

CLASSIFIER = TEXT_CLASSIFIER
QUERY = "how do cats sleep"
TEXTS = [
    "Cats sleep up to sixteen hours a day.",
    "The stock market fell sharply on Monday.",
    "A kitten curled up on the sofa. " * 40,  # past the 64-token maximum with the query
    "",
    "Dogs and cats are common pets.",
    "日本語のテキスト",
]
MAX_DOCUMENTS = 12


@pytest.fixture(scope="module")
def pair_app(pair_engines, tmp_path_factory) -> Iterator[TestClient]:
    """Small rerank limits, so they are cheap to reach."""
    flags = ("--max-documents", str(MAX_DOCUMENTS), "--max-rerank-chars", "5000")
    run_dir = tmp_path_factory.mktemp("pair-app")
    with serve_in_process(pair_engines, run_dir, "--max-loaded-models", "12", *flags) as app:
        yield app


def test_builds_are_detected_and_labelled(pair_app, pair_engines):
    reranker = Manifest.read(Repository(pair_engines).find(RERANKER).directory)
    classifier = Manifest.read(Repository(pair_engines).find(CLASSIFIER).directory)
    assert (reranker.library, reranker.task, reranker.classifier.activation) == (
        "cross_encoder",
        "rerank",
        "sigmoid",
    )
    assert (classifier.task, classifier.classifier.activation) == ("text-classification", "softmax")
    assert reranker.build["verification"]["pair"]["max_abs_error"] <= 1e-4
    answer = pair_app.get("/model_classification_labels", params={"name": CLASSIFIER})
    assert answer.json == {"labels": TEXT_LABELS}


def test_rerank_equals_cross_encoder_predict(pair_app, cross_encoder):
    expected = cross_encoder.predict([(QUERY, text) for text in TEXTS])
    body = {"name": RERANKER, "query": QUERY, "texts": TEXTS, "return_text": True}
    answer = pair_app.post("/rerank", json=body)
    assert answer.status_code == 200, answer.text
    results = answer.json["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))
    for result in results:
        assert abs(result["score"] - expected[result["index"]]) <= 1e-4
        assert result["text"] == TEXTS[result["index"]]
    assert np.ptp(expected) > 1e-3, "scores this close would make the order meaningless"

    raw = pair_app.post(
        "/rerank", json={**body, "raw_scores": True, "top_n": 2, "return_text": False}
    ).json["results"]
    logits = cross_encoder.predict(
        [(QUERY, text) for text in TEXTS], activation_fn=torch.nn.Identity()
    )
    assert [r["index"] for r in raw] == [r["index"] for r in results[:2]]
    assert all(abs(r["score"] - logits[r["index"]]) <= 1e-4 for r in raw)
    assert "text" not in raw[0]


def test_classify_text_equals_transformers(pair_app, pair_sources):
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(pair_sources[CLASSIFIER]).eval()
    tokenizer = AutoTokenizer.from_pretrained(pair_sources[CLASSIFIER])
    texts = [*TEXTS, "word " * 700]  # past the 512-token maximum
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**encoded).logits, dim=-1).numpy()
    answer = pair_app.post("/classify_text", json={"name": CLASSIFIER, "text": texts, "top_k": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json
    assert np.abs(np.array(body["probabilities"]) - expected).max() <= 1e-4
    for row, top in zip(expected, body["labels"], strict=True):
        order = np.argsort(-row, kind="stable")[:2]
        assert [entry["label"] for entry in top] == [TEXT_LABELS[i] for i in order]
        assert abs(top[0]["score"] - row[order[0]]) <= 1e-4
    single = pair_app.post("/classify_text", json={"name": CLASSIFIER, "text": TEXTS[0]}).json
    assert len(single["labels"]) == 1 and len(single["labels"][0]) == len(TEXT_LABELS)


def pair_tokens(cross_encoder, texts: list[str]) -> int:
    """The tokens of every (query, text) pair, by the reference library's tokenizer."""
    encoded = cross_encoder.tokenizer([QUERY] * len(texts), texts, truncation=True)
    return sum(len(ids) for ids in encoded["input_ids"])


def test_v1_rerank_takes_jina_style_document_objects(pair_app, cross_encoder):
    documents = [{"text": text} for text in TEXTS[:3]]
    body = {"model": RERANKER, "query": QUERY, "documents": documents, "top_n": 10}
    answer = pair_app.post("/v1/rerank", json=body).json
    tokens = pair_tokens(cross_encoder, TEXTS[:3])
    assert answer["model"] == RERANKER
    assert answer["usage"] == {"total_tokens": tokens, "documents": 3}
    assert sorted(r["index"] for r in answer["results"]) == [0, 1, 2]
    assert all("document" not in r for r in answer["results"])
    scores = [r["relevance_score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True)


def test_embedding_model_ranks_by_embed_text_cosines(pair_app):
    embeddings = pair_app.post("/embed_text", json={"name": MINILM, "text": [QUERY, *TEXTS]})
    vectors = np.array(embeddings.json["embeddings"])
    expected = cosines(vectors[1:], np.repeat(vectors[:1], len(TEXTS), axis=0))
    answer = pair_app.post("/rerank", json={"name": MINILM, "query": QUERY, "texts": TEXTS})
    results = answer.json["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))
    assert all(abs(r["score"] - expected[r["index"]]) <= 1e-5 for r in results)


def test_clip_ranks_images_against_a_text_query(pair_app):
    images = [base64.b64encode(png(40 + 8 * i, 48, seed=i)).decode() for i in range(5)]
    query = "a photo of a cat"
    text = pair_app.post("/embed_text", json={"name": CLIP, "text": query}).json["embeddings"]
    embedded = pair_app.post("/embed_image", json={"name": CLIP, "image": images}).json
    vectors = np.array(embedded["embeddings"])
    expected = cosines(vectors, np.repeat(np.array(text), len(images), axis=0))
    answer = pair_app.post("/rerank", json={"name": CLIP, "query": query, "images": images})
    assert answer.status_code == 200, answer.text
    results = answer.json["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))
    assert all(abs(r["score"] - expected[r["index"]]) <= 1e-5 for r in results)


@pytest.mark.parametrize(
    ("route", "body", "status", "says"),
    [
        ("/rerank", {"name": RERANKER, "query": QUERY, "texts": []}, 400, "non-empty list"),
        ("/rerank", {"name": RERANKER, "query": QUERY}, 400, '"texts" is required'),
        ("/rerank", {"name": RERANKER, "texts": TEXTS}, 400, '"query" is required'),
        ("/rerank", {"name": RERANKER, "query": QUERY, "texts": ["x"] * 13}, 413, "limit is 12"),
        ("/rerank", {"name": RERANKER, "query": QUERY, "texts": ["x" * 3000] * 2}, 413, "5000"),
        ("/rerank", {"name": TIMM, "query": QUERY, "texts": TEXTS}, 400, "image classifier"),
        ("/rerank", {"name": CLASSIFIER, "query": QUERY, "texts": TEXTS}, 400, "/classify_text"),
        ("/rerank", {"name": RERANKER, "query": QUERY, "texts": TEXTS, "top_n": 0}, 400, "top_n"),
        ("/rerank", {"name": RERANKER, "query": QUERY, "texts": TEXTS, "top_n": 1.5}, 400, "top_n"),
        ("/rerank", {"name": RERANKER, "query": QUERY, "texts": [1]}, 400, '"texts"[0]'),
        (
            "/rerank",
            {"name": RERANKER, "query": QUERY, "texts": TEXTS, "truncate": False},
            400,
            '"truncate": true',
        ),
        (
            "/rerank",
            {"name": RERANKER, "query": QUERY, "texts": ["x"], "images": ["y"]},
            400,
            "not both",
        ),
        (
            "/rerank",
            {"name": MINILM, "query": QUERY, "texts": TEXTS, "truncate": False},
            400,
            "for cross-encoders",
        ),
        ("/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": []}, 400, "non-empty"),
        ("/v1/rerank", {"query": QUERY, "documents": TEXTS}, 400, '"model" is required'),
        (
            "/v1/rerank",
            {"model": RERANKER, "query": QUERY, "documents": [{"txt": "a"}]},
            400,
            '"documents"[0]',
        ),
        ("/v1/rerank", {"model": 7, "query": QUERY, "documents": TEXTS}, 400, '"model" must be'),
        ("/v1/embeddings", {"model": RERANKER, "input": "a"}, 400, "not an embedding model; use"),
        ("/classify_text", {"name": RERANKER, "text": "a"}, 400, "/rerank"),
        ("/classify_text", {"name": MINILM, "text": "a"}, 400, "not a text classifier"),
        ("/classify_text", {"name": CLASSIFIER, "text": "a", "top_k": -1}, 400, "top_k"),
        ("/embed_text", {"name": RERANKER, "text": "a"}, 400, "/rerank"),
        ("/classify_image", {"name": CLASSIFIER, "image": "aGk="}, 400, "text only"),
    ],
)
def test_bad_input_is_a_clear_4xx(pair_app, route, body, status, says):
    answer = pair_app.post(route, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json["error"]
    # /v1/ routes may answer errors in OpenAI's shape, {"error": {"message": ...}}.
    assert says in (error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": 7, "query": QUERY, "documents": TEXTS}, "model"),
        ({"model": RERANKER, "query": 7, "documents": TEXTS}, "query"),
        ({"model": RERANKER, "query": QUERY, "documents": [1]}, "documents"),
        ({"model": RERANKER, "query": QUERY, "documents": TEXTS, "top_n": 0}, "top_n"),
        ({"model": RERANKER, "query": QUERY, "documents": TEXTS, "topN": 0}, "topN"),
        ({"model": RERANKER, "query": QUERY, "documents": ["x"] * 13}, "documents"),
    ],
)
def test_cohere_errors_name_the_field_as_sent(pair_app, body, param):
    error = pair_app.post("/v1/rerank", json=body).json["error"]
    assert error["param"] == param and f'"{param}"' in error["message"]


def test_pairs_run_through_the_tower_and_its_metrics(pair_app, caplog):
    pair_app.post("/rerank", json={"name": RERANKER, "query": QUERY, "texts": TEXTS})
    stats = pair_app.get("/metrics").json["modelStats"]
    [entry] = [entry for entry in stats if entry["name"] == RERANKER]
    assert int(entry["inferenceCount"]) >= len(TEXTS)
    prometheus = pair_app.get("/metrics/prometheus").text
    assert f'model="{RERANKER}",tower="pair_encoder"' in prometheus
    assert not [record for record in caplog.records if record.exc_info]  # no traceback


def test_task_option_chooses_how_a_cross_encoder_is_served(pair_sources, tmp_path):
    from builder import BuildError, BuildOptions, Progress, build_model

    quiet = Progress(quiet=True)
    as_classifier = BuildOptions(task="text-classification")
    build_model(str(pair_sources[RERANKER]), tmp_path, "c", options=as_classifier, progress=quiet)
    manifest = Repository(tmp_path).find("c").manifest
    assert (manifest.task, manifest.classifier.activation) == ("text-classification", "sigmoid")
    with pytest.raises(BuildError, match="has 3 labels; a reranker has one score"):
        options = BuildOptions(task="rerank")
        build_model(str(pair_sources[CLASSIFIER]), tmp_path, "r", options=options, progress=quiet)


def test_load_model_builds_a_hub_cross_encoder_on_demand(
    pair_sources, tmp_path, cross_encoder, monkeypatch
):
    """/load_model with a Hub id (from the local Hub cache) detects the cross-encoder from its
    config.json, builds it in a subprocess and serves it."""
    hub_id = "ingrain-test/tiny-cross-encoder"
    put_in_hub_cache(pair_sources[RERANKER], tmp_path / "hf-home", hub_id)
    (tmp_path / "engines").mkdir()
    # The build runs as a child of this process: it finds the model in this Hub cache only.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with serve_in_process(tmp_path / "engines", tmp_path) as app:
        answer = app.post("/load_model", json={"name": hub_id})
        assert answer.status_code == 200, answer.text
        models = app.get("/loaded_models").json["models"]
        assert {"name": hub_id, "library": "cross_encoder"} in models
        ranked = app.post("/rerank", json={"name": hub_id, "query": QUERY, "texts": TEXTS})
        expected = cross_encoder.predict([(QUERY, text) for text in TEXTS])
        scores = {r["index"]: r["score"] for r in ranked.json["results"]}
        assert max(abs(scores[i] - expected[i]) for i in range(len(TEXTS))) <= 1e-4


def test_long_pairs_are_cut_before_tokenizing_to_the_same_encoding(pair_engines):
    """Queries and texts far past the maximum encode exactly as whole ones do, at a cost that
    follows the model's length. (Whole, a 100 KB query with 500 texts took 75 s and 2.5 GB: the
    pair overflow grows as the product of both sides' lengths.)"""
    from tokenizers import Tokenizer

    from runtime.pairs import PairTokenizer

    entry = Repository(pair_engines).find(RERANKER)
    tokenizer = PairTokenizer(entry.directory, entry.manifest.tokenizer)
    whole = Tokenizer.from_file(str(entry.directory / entry.manifest.tokenizer.file))
    whole.enable_truncation(entry.manifest.tokenizer.max_length, strategy="longest_first")
    whole.no_padding()
    # Long enough to be cut (the tiny model reads 64 tokens), short enough that the whole
    # texts' pair overflow, which tokenizers computes as a product of both sides, stays small.
    words = [f"word{i % 97} élan {i}" for i in range(300)]
    long_text, short = " ".join(words), "a short query"
    pairs = [
        (long_text, long_text),
        (short, long_text),
        (long_text, short),
        (" ".join(words[:40]), long_text),
    ]
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    ours = tokenizer.encode(first, second)
    theirs = whole.encode_batch(pairs)
    assert [e.ids for e in ours] == [e.ids for e in theirs]
    assert [e.type_ids for e in ours] == [e.type_ids for e in theirs]
    assert [bool(e.overflowing) for e in ours] == [True] * 4  # truncate: false still refuses
