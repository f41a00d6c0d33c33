"""Packed text towers: several texts per row, against the padded graph and sentence-transformers
on the same weights, built with the real builder and run on both CPU backends."""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from builder import Progress, build_model
from runtime.batching.packing import (
    bucket_width,
    first_fit_decreasing,
    pack,
    plan,
    split,
    to_bucket_width,
)
from runtime.config import RuntimeConfig
from runtime.errors import InputError
from runtime.models import Model
from runtime.repository import Entry, Repository, slugify
from runtime.repository.manifest import Manifest
from runtime.tasks.text_embedding import TextEmbedding, TextEmbeddingOptions, embed_texts
from runtime.text import TextOptions, TokenRow
from tests.conftest import CLIP, EXACT, MINILM, cosines
from tests.models import tiny_sentence_transformer

BACKENDS = ("onnxruntime", "openvino")

RAW = TextEmbeddingOptions(normalize=False)


def mixed_rows(model: Model) -> list[TokenRow]:
    """Token rows from 1 token to the model's maximum, in one execution: a lone [CLS], texts
    of every size, a text cut at the maximum, and a row of exactly the maximum."""
    texts = ["", "a", "two words", "a sentence of middling length, say ten words or so"]
    texts += ["word " * n for n in (20, 37, 61, 300)]
    rows = model.text.rows(texts, TextOptions())
    maximum = model.text.max_length
    rows += [TokenRow([101]), TokenRow([101] + [2003] * (maximum - 2) + [102])]
    return rows


def embed_both(entry: Entry, rows: list[TokenRow], backend: str) -> tuple[np.ndarray, ...]:
    """The rows' embeddings from the packed tower and from the padded one."""
    outputs = []
    for packing in (True, False):
        model = Model.load(entry, RuntimeConfig(backend=backend, precision="f32", packing=packing))
        try:
            expected_graph = "text.packed.onnx" if packing else "text.onnx"
            assert model.text.tower.spec.onnx == expected_graph
            outputs.append(TextEmbedding(model, RAW).run(rows))
        finally:
            model.close()
    return tuple(outputs)


@pytest.mark.parametrize(
    ("pooling", "dense"),
    [
        ("cls", False),
        ("max", False),
        ("lasttoken", False),
        ("mean_sqrt_len_tokens", False),
        ("weightedmean", False),
        ("mean", True),
    ],
)
def test_every_pooling_mode_packs_and_matches_the_padded_graph(
    tmp_path, minilm_source, pooling, dense
):
    source, reference = tiny_sentence_transformer(tmp_path, minilm_source, pooling, dense)
    engines = tmp_path / "engines"
    build_model(str(source), engines, name="tiny", progress=Progress(quiet=True))
    entry = Repository(engines).find("tiny")
    packed_spec = entry.manifest.towers["text"].packed
    assert packed_spec is not None and packed_spec.figures["min_cosine"] >= 0.9999
    assert packed_spec.figures["padded_min_cosine"] >= 0.9999
    loaded = Model.load(entry, RuntimeConfig(backend="onnxruntime"))
    rows = mixed_rows(loaded)
    loaded.close()
    assert {len(row.ids) for row in rows} >= {1, 2, 64}
    for backend in BACKENDS:
        packed, padded = embed_both(entry, rows, backend)
        error = np.abs(packed - padded).max()
        cosine = cosines(packed, padded).min()
        print(f"{pooling} {backend}: min cosine {cosine:.7f}, max abs {error:.2e}")
        assert cosine >= 0.9999
    # The texts (the last one cut at the maximum, as before) against sentence-transformers.
    texts = ["", "a", "two words", "word " * 300]
    model = Model.load(entry, RuntimeConfig(backend="onnxruntime"))
    served = embed_texts(model, texts, RAW)
    model.close()
    assert cosines(served, reference.encode(texts)).min() >= 0.9999


def test_a_model_whose_pooling_leaves_the_prompt_out_keeps_the_padded_graph_and_says_why(
    tmp_path, minilm_source, capsys
):
    prompts = {"query": "query: "}
    source, _ = tiny_sentence_transformer(
        tmp_path, minilm_source, "mean", False, include_prompt=False, prompts=prompts
    )
    engines = tmp_path / "engines"
    build_model(str(source), engines, name="tiny", progress=Progress())
    manifest = Manifest.read(engines / "tiny")
    assert manifest.towers["text"].packed is None
    assert "include_prompt" in manifest.build["packing"]
    assert not (engines / "tiny" / "text.packed.onnx").exists()
    assert "padded graph only, not packed" in capsys.readouterr().err
    model = Model.load(Repository(engines).find("tiny"))
    assert model.text.tower.spec.onnx == "text.onnx"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count", [1, 256])
def test_one_text_and_256_texts_per_request_pack(engines, reference, backend, count):
    entry = Repository(engines).find(MINILM)
    model = Model.load(entry, RuntimeConfig(backend=backend))
    try:
        assert model.text.tower.spec.onnx == "text.packed.onnx"
        texts = [f"text number {i} " + "and more " * (i % 40) for i in range(count)]
        served = embed_texts(model, texts, RAW)
    finally:
        model.close()
    expected = reference.encode(texts)
    assert served.shape == (count, 384)
    assert cosines(served, expected).min() >= 0.9999


class Counting:
    """The tower's real backend, noting each execution's texts, real tokens and text lengths."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.executions: list[tuple[int, int]] = []
        self.lengths: list[np.ndarray] = []

    def run(self, inputs):
        segments = inputs["segment_ids"]
        self.executions.append((int(segments.max()), int(np.count_nonzero(segments))))
        self.lengths.append(np.bincount(segments.ravel())[1:])
        return self.backend.run(inputs)

    def __getattr__(self, name: str):
        return getattr(self.backend, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_texts_fill_executions_past_the_max_batch_where_the_engine_gains(
    engines, reference, backend
):
    """OpenVINO runs packed executions of more texts than the max batch (32) while they hold at
    most its `packed_tokens`; ONNX Runtime, whose executions ran slower past the max batch,
    never. Long texts stay within the max batch on both, and every embedding matches."""
    model = Model.load(Repository(engines).find(MINILM), RuntimeConfig(backend=backend))
    tower = model.text.tower
    counting = Counting(tower.backend)
    tower.backend = counting
    texts = [f"short text {i}" for i in range(90)] + [
        f"{i} long " + "word " * 60 for i in range(38)
    ]
    try:
        served = embed_texts(model, texts, RAW)
    finally:
        tower.backend = counting.backend
        model.close()
    assert cosines(served, reference.encode(texts)).min() >= 0.9999
    bound, most = counting.backend.packed_tokens, tower.spec.max_batch
    assert sum(texts for texts, _ in counting.executions) == len(texts)
    largest = max(texts for texts, _ in counting.executions)
    if bound is None:
        assert largest <= most
    else:
        assert largest > most
        assert all(tokens <= bound for texts, tokens in counting.executions if texts > most)
    long_texts = [int((lengths > 20).sum()) for lengths in counting.lengths]
    assert sum(long_texts) == 38 and max(long_texts) <= most


def test_rows_never_mix_texts_of_different_towers(engines):
    """MiniLM's and the tiny CLIP's packed text towers, fed at once from several threads: each
    text's embedding equals the one its own tower gives it alone (a row holding another
    tower's token ids would change it)."""
    models = [Model.load(Repository(engines).find(name), EXACT) for name in (MINILM, CLIP)]
    texts = [f"text {i} " + "and more " * (i % 30) for i in range(48)]
    try:
        assert all(model.text.tower.spec.onnx == "text.packed.onnx" for model in models)
        alone = [embed_texts(model, texts, RAW) for model in models]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            at_once = [
                pool.submit(embed_texts, models[i % 2], texts[i // 2 :: 6], RAW) for i in range(12)
            ]
            for i, future in enumerate(at_once):
                expected = alone[i % 2][i // 2 :: 6]
                assert cosines(future.result(timeout=120), expected).min() >= 0.9999
    finally:
        for model in models:
            model.close()


def test_the_manifest_records_the_packed_graph_and_its_figures(engines):
    manifest = Manifest.read(engines / slugify(MINILM))
    packed = manifest.towers["text"].packed
    assert packed.onnx == "text.packed.onnx"
    assert [tensor.name for tensor in packed.inputs] == ["input_ids", "segment_ids"]
    assert packed.figures["min_cosine"] >= 0.9999 and packed.figures["mixes"] >= 3
    assert "text.packed.onnx" in manifest.named_files()
    assert "text.packed.onnx" in manifest.files


def test_a_manifest_from_before_packing_loads_with_the_padded_graph(engines):
    older = json.loads(Manifest.read(engines / slugify(MINILM)).to_json())
    del older["towers"]["text"]["packed"]
    assert Manifest.from_dict(older).towers["text"].packed is None


def test_first_fit_decreasing_keeps_each_text_whole_within_the_row():
    lengths = [5, 60, 1, 33, 33, 64, 2, 17, 40]
    rows = first_fit_decreasing(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 5  # the fewest: 64, 60, 40 and the two 33s cannot share a row


def test_pack_numbers_segments_by_text_and_leaves_only_row_tails_unused():
    ids = [[101, 7, 102], [101, 102], [101] + [9] * 10 + [102], [101, 5, 5, 5, 102]]
    inputs = pack(ids, pad_id=0)
    segments, tokens = inputs["segment_ids"], inputs["input_ids"]
    for text, row_ids in enumerate(ids, start=1):
        assert tokens[segments == text].tolist() == row_ids
    for row in segments:  # texts contiguous, then the unused tail
        used = np.count_nonzero(row)
        assert (row[:used] > 0).all() and (row[used:] == 0).all()
    assert plan([len(row) for row in ids]).executed_tokens == segments.size


def test_bucket_widths_are_few_and_add_at_most_a_quarter():
    buckets = {width: bucket_width(width) for width in range(1, 1025)}
    assert all(width <= bucket < 1.25 * width + 1 for width, bucket in buckets.items())
    assert all(bucket_width(bucket) == bucket for bucket in buckets.values())
    assert len({bucket for bucket in buckets.values() if 64 <= bucket < 128}) == 4


def test_rows_widened_to_a_bucket_give_the_same_embeddings(engines):
    """OpenVINO bf16's executions are widened to bucket widths (its kernels are built per
    shape): the unused tails they gain change no text's embedding, at any precision."""
    model = Model.load(Repository(engines).find(MINILM), RuntimeConfig(backend="openvino"))
    try:
        tower = model.text.tower
        inputs = tower.collate(mixed_rows(model)[:5])
        widened = to_bucket_width(inputs)
        width = inputs["segment_ids"].shape[1]
        assert widened["segment_ids"].shape[1] == bucket_width(width) > width
        assert (widened["segment_ids"][:, width:] == 0).all()
        exact, padded = tower.backend.run(inputs).output, tower.backend.run(widened).output
    finally:
        model.close()
    print(f"widened {width} -> {bucket_width(width)}: max abs {np.abs(exact - padded).max():.2e}")
    assert cosines(exact, padded).min() >= 0.99999


def test_split_keeps_executions_within_the_token_budget():
    lengths = [300, 10, 200, 5, 250, 60, 1]
    executions = split(lengths, lambda length: length, 400, 3)
    assert sorted(x for execution in executions for x in execution) == sorted(lengths)
    assert all(sum(execution) <= 400 and len(execution) <= 3 for execution in executions)
    assert split([900], lambda length: length, 400, 3) == [[900]]  # one text at least
    assert [len(e) for e in split([1] * 7, lambda length: length, 400, 3)] == [3, 3, 1]


def test_split_takes_more_short_texts_within_short_tokens():
    lengths = [100] * 5 + [3] * 30
    executions = split(lengths, lambda length: length, 400, 3, short_tokens=90)
    # Long texts: at most 3 per execution; short ones: more, while within 90 tokens.
    assert executions == [[100] * 3, [100, 100, 3], [3] * 29]
    assert [len(e) for e in split([3] * 40, lambda length: length, 400, 3, 90)] == [30, 10]


def test_metrics_count_executed_and_padding_tokens(app):
    texts = ["short", "a somewhat longer text that needs more tokens than the first one"]
    assert app.post("/embed_text", json={"name": MINILM, "text": texts}).status_code == 200
    text = app.get("/metrics/prometheus").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    executed = families["ingrain_executed_tokens"].samples
    padding = families["ingrain_padding_tokens"].samples
    tower = {"model": MINILM, "tower": "text_encoder"}
    [executed_total] = [
        s.value for s in executed if s.labels == tower and s.name.endswith("_total")
    ]
    [padding_total] = [s.value for s in padding if s.labels == tower and s.name.endswith("_total")]
    assert executed_total > padding_total >= 0


def test_an_empty_token_id_input_is_refused_saying_so(engines):
    model = Model.load(Repository(engines).find(MINILM), RuntimeConfig(backend="onnxruntime"))
    try:
        with pytest.raises(InputError, match=r"input\[1\] holds no token ids"):
            model.text.id_rows([[101, 102], []], TextOptions())
    finally:
        model.close()
