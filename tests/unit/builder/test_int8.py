"""The opt-in int8 tier: `ingrain-build --int8` verifies an int8 variant against
sentence-transformers on held-out texts (or writes none), and the server runs it only when
asked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import requests

from builder import BuildOptions, Progress, build_model
from builder.options import Int8Thresholds
from runtime.batching import BatchingConfig
from runtime.config import RuntimeConfig
from runtime.models import Model, ModelLoadError
from runtime.repository import Entry, Repository
from runtime.tasks.rerank import rerank
from tests.conftest import MINILM, RERANKER, TEXT_CLASSIFIER, cosines, start_server, stop_server
from tests.integration.test_cli import run
from tests.models import tiny_sentence_transformer

SENTENCES = [
    "A man is playing a guitar on the street.",
    "The new movie is awesome and everyone loved it.",
    "A woman is slicing an onion in the kitchen.",
    "Stock markets fell sharply after the announcement.",
    "The cat sleeps on the warm windowsill.",
    "How do I reset my password?",
    "Quantum computers use qubits instead of bits.",
    "The train to Berlin leaves at eight in the morning.",
]


@pytest.fixture(scope="module")
def int8_engines(tmp_path_factory, minilm_source):
    root = tmp_path_factory.mktemp("int8-engines")
    options = BuildOptions(int8=Int8Thresholds())
    build_model(minilm_source, root, name=MINILM, options=options, progress=Progress(quiet=True))
    return root


def int8_of(root):
    entry = Repository(root).find(MINILM)
    return entry, entry.manifest.towers["text"].int8


def test_the_build_records_its_figures_and_the_layers_kept_f32(int8_engines):
    entry, int8 = int8_of(int8_engines)
    assert int8 is not None
    assert int8["min_cosine"] >= 0.99 and int8["top10_overlap"] >= 0.9
    assert int8["min_cosine"] <= int8["mean_cosine"] <= 1.0
    assert int8["thresholds"] == {"min_cosine": 0.99, "top10_overlap": 0.9}
    assert int8["items"] > 200 and int8["verified_on"] is not None
    # The file is part of the model (its digest recorded) and really is int8 where it says.
    assert int8["onnx"] in entry.manifest.files
    graph = onnx.load(str(entry.directory / int8["onnx"])).graph
    f32_matmuls = {node.name for node in graph.node if node.op_type == "MatMul"}
    assert set(int8["kept_f32"]) <= f32_matmuls
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) > 0


def test_the_packed_graph_gets_its_int8_variant_or_the_build_says_why(int8_engines):
    """The packed graph in int8 keeps the same MatMuls f32 (under its own node names) and is
    verified on its own; where it falls short, int8 serves the padded variant, and the manifest
    says so."""
    entry, int8 = int8_of(int8_engines)
    packed = entry.manifest.towers["text"].packed.int8
    if packed is None:
        assert entry.manifest.build["int8_packing"].startswith("int8 runs padded")
        return
    assert packed["min_cosine"] >= 0.99 and packed["top10_overlap"] >= 0.9
    assert packed["thresholds"] == int8["thresholds"] and packed["items"] == int8["items"]
    assert packed["onnx"] in entry.manifest.files
    graph = onnx.load(str(entry.directory / packed["onnx"])).graph
    assert len(packed["kept_f32"]) == len(int8["kept_f32"])
    assert set(packed["kept_f32"]) <= {node.name for node in graph.node if node.op_type == "MatMul"}
    assert not set(packed["kept_f32"]) & set(int8["kept_f32"])  # other names, same weights
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) > 0


def test_int8_serves_the_packed_variant_where_the_build_verified_one(int8_engines):
    entry, int8 = int8_of(int8_engines)
    tower = entry.manifest.towers["text"]
    if tower.packed.int8 is None:
        pytest.skip(entry.manifest.build["int8_packing"])
    runtime = RuntimeConfig(backend="onnxruntime", precision="int8")
    without = replace(tower, packed=replace(tower.packed, int8=None))
    bare = replace(entry.manifest, towers={**entry.manifest.towers, "text": without})
    for manifest, graph, variant in (
        (entry.manifest, "text.packed.onnx", tower.packed.int8),
        (bare, "text.onnx", int8),
    ):
        model = Model.load(Entry(entry.directory, manifest), runtime, warm_up=False)
        try:
            assert model.text.tower.spec.onnx == graph
            assert model.text.tower.spec.int8 == variant
            assert model.text.tower.backend.precision == "int8"
        finally:
            model.close()


def test_counterparts_pair_each_padded_matmul_with_the_packed_one_of_its_weights(engines):
    from builder.int8 import counterparts, weight_matmuls

    directory = Repository(engines).find(MINILM).directory
    padded, packed = directory / "text.onnx", directory / "text.packed.onnx"
    names = [node.name for node in weight_matmuls(onnx.load(str(padded)))]
    matched = counterparts(padded, packed, names)
    assert matched is not None and len(matched) == len(names) == 36
    assert set(matched) == {node.name for node in weight_matmuls(onnx.load(str(packed)))}
    assert counterparts(padded, packed, ["no such node"]) is None


def test_a_request_served_in_int8_matches_sentence_transformers(int8_engines, reference, tmp_path):
    entry, int8 = int8_of(int8_engines)
    int8 = entry.manifest.towers["text"].packed.int8 or int8  # the variant the server runs
    log = tmp_path / "server.log"
    server = start_server(
        int8_engines, log, "--backend", "onnxruntime", "--model-precision", f"{MINILM}=int8"
    )
    try:
        response = server.post("/embed_text", {"name": MINILM, "text": SENTENCES})
        assert response.ok, response.text
        served = response.json()["embeddings"]
        stats = requests.get(server.url + "/metrics", timeout=30).json()["modelStats"]
        info = requests.get(server.url + "/model_info", params={"name": MINILM}, timeout=30)
    finally:
        stop_server(server)
    expected = reference.encode(SENTENCES, normalize_embeddings=True)
    assert cosines(served, expected).min() >= int8["min_cosine"]
    (entry,) = [tower for tower in stats if tower["name"] == MINILM]
    assert (entry["backend"], entry["precision"]) == ("onnxruntime", "int8")
    assert info.json()["towers"]["text"]["int8"] == int8  # the figures of the variant served


@pytest.mark.parametrize("packing", [False, True])
def test_auto_measures_int8_beside_f32_but_serves_a_lossless_precision(
    int8_engines, tmp_path, packing
):
    """On the graph served: the padded one, and the packed one where its int8 variant holds."""
    entry = Repository(int8_engines).find(MINILM)
    if packing and entry.manifest.towers["text"].packed.int8 is None:
        pytest.skip(entry.manifest.build["int8_packing"])
    runtime = RuntimeConfig(
        state_dir=str(tmp_path), batching=BatchingConfig(max_tokens=512), packing=packing
    )
    model = Model.load(entry, runtime)
    try:
        backend = model.text.tower.backend
        assert model.text.tower.spec.onnx == ("text.packed.onnx" if packing else "text.onnx")
        assert "onnxruntime/int8" in backend.decision.figures
        assert backend.precision != "int8"
    finally:
        model.close()


def test_an_unreachable_threshold_leaves_no_int8_variant_and_says_so(
    tmp_path, minilm_source, capsys
):
    source, _ = tiny_sentence_transformer(tmp_path / "tiny", minilm_source, "mean", False)
    root = tmp_path / "engines"
    options = BuildOptions(int8=Int8Thresholds(min_cosine=1.0))
    build_model(str(source), root, name="tiny", options=options, progress=Progress())
    entry = Repository(root).find("tiny")
    assert entry.manifest.towers["text"].int8 is None
    assert not list(entry.directory.glob("*.int8.onnx"))
    assert entry.manifest.build["int8"].startswith("no int8 variant")
    assert "no int8 variant: no mix of int8 and f32 MatMuls reached" in capsys.readouterr().err


def test_int8_without_a_verified_variant_is_refused_naming_the_build_flag(engines):
    for flags in (
        ("--precision", "int8", "--preload", MINILM),
        ("--model-precision", f"{MINILM}=int8"),
    ):
        refused = run("ingrain-serve", "--engines", str(engines), *flags)
        assert refused.returncode == 1, refused.stderr
        assert "no verified int8 variant" in refused.stderr
        assert "ingrain-build --int8" in refused.stderr
    # A model loaded on demand under --precision int8 fails its load the same way.
    with pytest.raises(ModelLoadError, match="ingrain-build --int8"):
        Model.load(Repository(engines).find(MINILM), RuntimeConfig(precision="int8"))


def test_the_search_keeps_the_fewest_sensitive_matmuls_that_pass_and_leaves_their_file():
    from builder.int8 import search

    ranked = [f"MatMul_{index}" for index in range(36)]
    tried: list[int] = []

    def attempt(keep: list[str]) -> dict:
        tried.append(len(keep))  # the last attempt is the file left on disk
        return {"kept": len(keep)}

    figures = search(ranked, attempt, lambda figures: figures["kept"] >= 11)
    assert figures == {"kept": 11} and tried[-1] == 11
    assert tried[:6] == [0, 1, 2, 4, 8, 16]  # none, then doubling, then bisecting 8..16
    tried.clear()
    # The bisection ends on a failing try (9): the passing mix (10) is written again.
    assert search(ranked, attempt, lambda figures: figures["kept"] >= 10) == {"kept": 10}
    assert tried[6:] == [12, 10, 9, 10]
    tried.clear()
    assert search(ranked, attempt, lambda figures: False) is None
    assert tried == [0, 1, 2, 4, 8, 16, 32]  # never all 36: that would be no int8 at all


def test_neighbour_overlap_counts_shared_nearest_neighbours():
    from builder.int8 import neighbour_overlap

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16))
    assert neighbour_overlap(vectors, vectors) == 1.0
    assert neighbour_overlap(vectors, rng.normal(size=(50, 16))) < 0.5


def test_a_reranker_gets_an_int8_variant_judged_by_rank_agreement(pair_sources, tmp_path, capsys):
    """The tiny random reranker's scores sit close together, so int8 reorders many documents:
    the default threshold refuses it, a threshold of 0 keeps the all-int8 mix, and the server
    runs it when asked."""
    root = tmp_path / "engines"
    source = str(pair_sources[RERANKER])
    build_model(source, root, name="strict", options=BuildOptions(int8=Int8Thresholds()))
    strict = Repository(root).find("strict")
    assert strict.manifest.towers["pair"].int8 is None
    assert "rank agreement >= 0.9" in strict.manifest.build["int8"]
    assert "no int8 variant" in capsys.readouterr().err

    loose = BuildOptions(int8=Int8Thresholds(min_overlap=0.0))
    build_model(source, root, name="loose", options=loose, progress=Progress(quiet=True))
    entry = Repository(root).find("loose")
    int8 = entry.manifest.towers["pair"].int8
    assert int8["kept_f32"] == [] and 0.0 <= int8["rank_agreement"] <= 1.0
    assert int8["thresholds"] == {"rank_agreement": 0.0}
    runtime = RuntimeConfig(precision="int8", batching=BatchingConfig(max_tokens=512))
    model = Model.load(entry, runtime)
    try:
        assert model.pair.tower.backend.precision == "int8"
        scores = rerank(model, "a query", ["a document", "another one"]).scores
        assert scores.shape == (2,) and np.isfinite(scores).all()
    finally:
        model.close()


def test_int8_is_refused_for_text_classifiers(pair_sources, tmp_path):
    from builder import BuildError

    with pytest.raises(BuildError, match="not text classifiers"):
        build_model(
            str(pair_sources[TEXT_CLASSIFIER]),
            tmp_path,
            options=BuildOptions(int8=Int8Thresholds()),
            progress=Progress(quiet=True),
        )
