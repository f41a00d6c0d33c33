"""Packed cross-encoders, text classifiers and CLIP text towers: several pairs or texts per row,
against the padded graph and the source library on the same weights, built with the real
builder, run on both CPU backends and served over real HTTP."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from builder import Progress, build_model
from builder.packed import segment_attention
from builder.packed_pairs import first_tokens
from runtime.backends.tensorrt.plan import (
    output_max_shape,
    packed_row_lengths,
    plan_profiles,
    select_profile,
)
from runtime.batching.packing import pack
from runtime.config import RuntimeConfig
from runtime.models import Model
from runtime.repository import Repository, slugify
from runtime.repository.manifest import Manifest, PlanSpec
from runtime.tasks.rerank import rerank
from runtime.tasks.text_embedding import TextEmbedding, TextEmbeddingOptions, embed_texts
from runtime.text import TokenRow
from tests.conftest import (
    CLIP,
    CUSTOM_CLIP,
    RERANKER,
    TEXT_CLASSIFIER,
    cosines,
    start_server,
    stop_server,
)

BACKENDS = ("onnxruntime", "openvino")
QUERY = "how do cats sleep"
TEXTS = [
    "",
    "a",
    "Cats sleep up to sixteen hours a day.",
    "The stock market fell sharply on Monday, and then recovered by Friday afternoon.",
    "A kitten curled up on the sofa. " * 100,  # past every maximum
    "日本語のテキスト",
]

RAW = TextEmbeddingOptions(normalize=False)


@pytest.fixture(scope="module")
def packed_engines(tmp_path_factory, pair_sources, clip_sources):
    """The tiny cross-encoder, text classifier and CLIPs, built with the real builder."""
    root = tmp_path_factory.mktemp("packed-engines")
    quiet = Progress(quiet=True)
    for name, source in pair_sources.items():
        build_model(str(source), root, name=name, progress=quiet)
    for name in (CLIP, CUSTOM_CLIP):
        build_model(f"local-dir:{clip_sources[name]}", root, name=name, progress=quiet)
    return root


def load_both(entry, backend: str):
    """The model served packed, then padded, on `backend` in f32."""
    for packing in (True, False):
        config = RuntimeConfig(backend=backend, precision="f32", packing=packing)
        yield packing, Model.load(entry, config)


def pair_items(model: Model) -> list[tuple[list[int], list[int]]]:
    """Pair-tower items from 1 token to the model's maximum, in one execution: a lone [CLS],
    pairs and single texts of every size, and pairs cut at the maximum."""
    tokenizer = model.pair.tokenizer
    encodings = tokenizer.encode([QUERY] * len(TEXTS), TEXTS) + tokenizer.encode(TEXTS)
    return [([101], [0])] + [(e.ids, e.type_ids) for e in encodings]


@pytest.mark.parametrize("name", [RERANKER, TEXT_CLASSIFIER])
def test_packed_pair_towers_match_the_padded_graph(packed_engines, name):
    entry = Repository(packed_engines).find(name)
    packed_spec = entry.manifest.towers["pair"].packed
    assert packed_spec is not None and packed_spec.onnx == "pair.packed.onnx"
    assert packed_spec.figures["max_abs_error"] <= 1e-4 and packed_spec.figures["mixes"] >= 3
    assert [t.name for t in packed_spec.inputs] == ["input_ids", "token_type_ids", "segment_ids"]
    for backend in BACKENDS:
        logits = {}
        for packing, model in load_both(entry, backend):
            try:
                expected = "pair.packed.onnx" if packing else "pair.onnx"
                assert model.pair.tower.spec.onnx == expected
                items = pair_items(model)
                logits[packing] = model.pair.tower.infer(items, [len(ids) for ids, _ in items])
            finally:
                model.close()
        lengths = {len(ids) for ids, _ in items}
        assert min(lengths) == 1 and max(lengths) == entry.manifest.tokenizer.max_length
        error = np.abs(logits[True] - logits[False]).max()
        print(f"{name} {backend}: {len(items)} items, max abs error {error:.2e}")
        assert error <= 1e-4


def test_a_packed_reranker_ranks_as_cross_encoder_predict(packed_engines, pair_sources):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(pair_sources[RERANKER]), device="cpu")
    pairs = [(QUERY, text) for text in TEXTS]
    model = Model.load(Repository(packed_engines).find(RERANKER), RuntimeConfig())
    try:
        assert model.pair.tower.spec.onnx == "pair.packed.onnx"
        scores = rerank(model, QUERY, TEXTS).scores
    finally:
        model.close()
    expected = reference.predict(pairs)
    print(f"reranker against CrossEncoder.predict: max abs {np.abs(scores - expected).max():.2e}")
    assert np.abs(scores - expected).max() <= 1e-4


def clip_rows(model: Model) -> list[TokenRow]:
    """CLIP token rows from 1 token (a lone start-of-text) to the full context, in one
    execution."""
    rows = TextEmbedding(model, RAW).prepare(TEXTS)
    context = model.text.max_length
    start, end = rows[0].ids[0], rows[0].ids[-1]
    return [TokenRow([start]), *rows, TokenRow([start] + [320] * (context - 2) + [end])]


@pytest.mark.parametrize("name", [CLIP, CUSTOM_CLIP])  # OpenCLIP's own text tower, and BERT's
def test_a_packed_clip_text_tower_matches_the_padded_graph_and_open_clip(
    packed_engines, clip_reference, name
):
    entry = Repository(packed_engines).find(name)
    packed_spec = entry.manifest.towers["text"].packed
    assert packed_spec is not None and packed_spec.figures["min_cosine"] >= 0.9999
    for backend in BACKENDS:
        embeddings = {}
        for packing, model in load_both(entry, backend):
            try:
                expected = "text.packed.onnx" if packing else "text.onnx"
                assert model.text.tower.spec.onnx == expected
                rows = clip_rows(model)
                embeddings[packing] = TextEmbedding(model, RAW).run(rows)
            finally:
                model.close()
        assert {len(row.ids) for row in rows} >= {1, entry.manifest.tokenizer.max_length}
        cosine = cosines(embeddings[True], embeddings[False]).min()
        error = np.abs(embeddings[True] - embeddings[False]).max()
        print(f"{name} text {backend}: min cosine {cosine:.7f}, max abs {error:.2e}")
        assert cosine >= 0.9999
    reference, _, tokenizer = clip_reference[name]
    with torch.no_grad():
        expected = reference.encode_text(tokenizer(TEXTS)).numpy()
    model = Model.load(entry, RuntimeConfig(backend="onnxruntime"))
    try:
        served = embed_texts(model, TEXTS, RAW)
    finally:
        model.close()
    assert cosines(served, expected).min() >= 0.9999


def test_a_clip_text_tower_that_reads_its_padding_builds_padded_only_saying_why(
    tmp_path, clip_sources, capsys
):
    """Without a causal mask (and without a padding mask), a CLIP text token attends to the
    padding after its text: the padded output depends on it, and packing would change it."""
    source = tmp_path / "bidirectional"
    shutil.copytree(clip_sources[CLIP], source)
    config = json.loads((source / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["no_causal_mask"] = True
    (source / "open_clip_config.json").write_text(json.dumps(config))
    build_model(f"local-dir:{source}", tmp_path / "engines", name="bidirectional")
    manifest = Manifest.read(tmp_path / "engines" / "bidirectional")
    assert manifest.towers["text"].packed is None
    assert "attends to the padding" in manifest.build["packing"]
    assert not (tmp_path / "engines" / "bidirectional" / "text.packed.onnx").exists()
    said = capsys.readouterr().err
    assert "text tower: padded graph only, not packed: its text transformer attends" in said
    model = Model.load(Repository(tmp_path / "engines").find("bidirectional"))
    try:
        assert model.text.tower.spec.onnx == "text.onnx"
    finally:
        model.close()


@pytest.fixture(scope="module")
def packed_server(packed_engines, tmp_path_factory):
    log = tmp_path_factory.mktemp("packed-server") / "server.log"
    server = start_server(packed_engines, log, "--workers", "1", "--packing")
    yield server
    stop_server(server)


def token_counters(server, model: str, tower: str) -> tuple[float, float]:
    """(executed token positions, padding positions) of one tower, from /metrics."""
    text = requests.get(server.url + "/metrics/prometheus", timeout=10).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    labels = {"model": model, "tower": tower}

    def total(family: str) -> float:
        samples = families[family].samples
        return sum(s.value for s in samples if s.labels == labels and s.name.endswith("_total"))

    return total("ingrain_executed_tokens"), total("ingrain_padding_tokens")


def test_served_packed_towers_match_the_source_libraries(
    packed_server, pair_sources, clip_reference
):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(pair_sources[RERANKER]), device="cpu")
    two = ["short", "a somewhat longer document that takes many more tokens than the first"]
    answer = packed_server.post("/rerank", {"name": RERANKER, "query": QUERY, "texts": two})
    assert answer.status_code == 200, answer.text
    expected = reference.predict([(QUERY, text) for text in two])
    for result in answer.json()["results"]:
        assert abs(result["score"] - expected[result["index"]]) <= 1e-4
    # Two pairs of different lengths in one execution: one packed row, no padding.
    executed, padding = token_counters(packed_server, RERANKER, "pair_encoder")
    assert executed > 0 and padding == 0

    model, _, tokenizer = clip_reference[CLIP]
    answer = packed_server.post("/embed_text", {"name": CLIP, "text": TEXTS})
    assert answer.status_code == 200, answer.text
    with torch.no_grad():
        expected = model.encode_text(tokenizer(TEXTS)).numpy()
    assert cosines(np.array(answer.json()["embeddings"]), expected).min() >= 0.9999
    # Padded, every CLIP text runs at the 77-token context; packed, at its own length.
    executed, padding = token_counters(packed_server, CLIP, "text_encoder")
    assert 0 < executed - padding < 77 * len(TEXTS)


def test_packed_plans_profile_rows_by_row_length_up_to_the_longest_text():
    assert packed_row_lengths(128, 256) == (1, 128, 256)  # rows grow to 256 tokens
    assert packed_row_lengths(512, 256) == (1, 128, 512)  # or to the longest text
    assert packed_row_lengths(77, 256) == (1, 128, 256)
    profiles = plan_profiles((1, 8, 32), packed_row_lengths(512, 256))
    assert select_profile(profiles, 3, 300) == 0 and select_profile(profiles, 20, 512) == 1


def test_a_packed_plan_holds_at_most_one_text_per_token_of_its_largest_input():
    assert output_max_shape((-1, 384), (32, 256)) == (32 * 256, 384)
    assert output_max_shape((8, 384), (8, 77)) == (8, 384)  # padded: as TensorRT says


def test_a_packed_plan_round_trips_through_model_json(packed_engines):
    manifest = Manifest.read(packed_engines / slugify(CLIP))
    text = manifest.towers["text"]
    info = PlanSpec("10.9.0", "NVIDIA A10G", "8.6", tuple(plan_profiles((1, 8, 32), (1, 128, 256))))
    packed = replace(text.packed, plan="text.packed.plan", plan_info=info)
    planned = replace(manifest, towers={"text": replace(text, packed=packed)})
    read = Manifest.from_dict(json.loads(planned.to_json()))
    assert read.towers["text"].packed == packed
    assert "text.packed.plan" in read.named_files()


def test_pack_keeps_each_pairs_token_types_with_its_tokens():
    ids = [[101, 7, 102, 8, 102], [101, 102], [101, 5, 5, 102, 9, 9, 9, 102]]
    types = [[0, 0, 0, 1, 1], [0, 0], [0, 0, 0, 0, 1, 1, 1, 1]]
    inputs = pack(ids, pad_id=0, token_types=types)
    for pair, (pair_ids, pair_types) in enumerate(zip(ids, types, strict=True), start=1):
        here = inputs["segment_ids"] == pair
        assert inputs["input_ids"][here].tolist() == pair_ids
        assert inputs["token_type_ids"][here].tolist() == pair_types
    assert (inputs["token_type_ids"][inputs["segment_ids"] == 0] == 0).all()


def test_first_tokens_gathers_each_segments_first_token_in_segment_order():
    segments = torch.tensor([[3, 3, 3, 1, 1, 0], [2, 2, 2, 2, 4, 0]])
    _, positions = segment_attention(segments, torch.float32)
    assert first_tokens(segments, positions).tolist() == [3, 6, 0, 10]
