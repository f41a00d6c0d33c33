"""`auto` keeps two engines for a tower where one is clearly faster on short executions and the
other on full batches, and runs each execution on the one faster at its size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.backends import Candidate, select
from runtime.backends.choice import Split, decide, plan, probe_key, state_file
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.backends.openvino import OpenVinoBackend
from runtime.backends.split import SplitBackend, execution_tokens
from runtime.batching import BatchingConfig
from runtime.config import RuntimeConfig
from runtime.models import Model
from runtime.repository import Repository, slugify
from runtime.tasks.text_embedding import embed_texts
from tests.conftest import EXACT, MINILM

ORT, OV, OV_BF16 = "onnxruntime/f32", "openvino/f32", "openvino/bf16"


def test_no_split_where_one_candidate_is_fastest_on_every_shape():
    figures = {ORT: {"1x16": 2.0, "32x64": 40.0}, OV: {"1x16": 4.0, "32x64": 60.0}}
    assert plan(figures) == (Candidate("onnxruntime", "f32"), None)


def test_no_split_where_a_winner_wins_by_less_than_the_margin():
    figures = {ORT: {"1x16": 2.0, "32x64": 40.0}, OV: {"1x16": 2.2, "32x64": 38.0}}
    choice, split = plan(figures)
    assert split is None and choice == Candidate("onnxruntime", "f32")


def test_split_at_the_crossing_of_the_two_cost_lines():
    # ORT: 2 ms + 0.0482 ms per token; OpenVINO bf16: 9.76 ms + 0.0148 ms per token: they cost
    # the same at 255 tokens.
    figures = {
        ORT: {"1x16": 2.0, "32x64": 100.0},
        OV: {"1x16": 12.0, "32x64": 90.0},
        OV_BF16: {"1x16": 10.0, "32x64": 40.0},
        "onnxruntime/int8": {"1x16": 1.0, "32x64": 10.0},  # lossy: never chosen
    }
    choice, split = plan(figures)
    assert choice == Candidate("onnxruntime", "f32")
    assert split == Split(Candidate("openvino", "bf16"), 255)


def test_execution_tokens_of_token_and_image_batches():
    assert execution_tokens({"input_ids": np.zeros((4, 30)), "mask": np.zeros((4, 30))}) == 120
    assert execution_tokens({"pixels": np.zeros((8, 3, 32, 32), np.uint8)}) == 8


class Handicapped:
    """A real backend that runs executions of more (or fewer) than `tokens` tokens four times."""

    def __init__(self, backend, tokens: int, large: bool) -> None:
        self.backend, self.tokens, self.large = backend, tokens, large
        self.name, self.precision = backend.name, backend.precision
        self.bucket_widths = backend.bucket_widths
        self.packed_tokens = backend.packed_tokens
        self.executions = 0

    def run(self, inputs):
        self.executions += 1
        slow = (execution_tokens(inputs) > self.tokens) == self.large
        for _ in range(3 if slow else 0):
            self.backend.run(inputs)
        return self.backend.run(inputs)

    def describe(self):
        return self.backend.describe()

    def close(self):
        self.backend.close()


@pytest.fixture(scope="module")
def minilm(engines) -> Path:
    return engines / slugify(MINILM)


def padded_tower(directory: Path):
    return Repository(directory.parent).find(MINILM).manifest.towers["text"]


def test_a_tower_split_by_measurement_runs_each_size_on_its_faster_engine(minilm):
    """ONNX Runtime made four times slower on full batches, OpenVINO on short rows: `auto`
    keeps both, and each execution runs where it is faster."""
    tower = padded_tower(minilm)

    def opener(candidate: Candidate):
        if candidate.backend == "openvino":
            return Handicapped(OpenVinoBackend(minilm / tower.onnx, "f32", 1), 100, large=False)
        return Handicapped(OnnxRuntimeBackend(minilm / tower.onnx, threads=1), 100, large=True)

    candidates = [Candidate("onnxruntime", "f32"), Candidate("openvino", "f32")]
    decision, backend = decide(None, tower, [minilm / tower.onnx], candidates, 1, opener)
    try:
        assert decision.choice == Candidate("onnxruntime", "f32"), decision.summary()
        assert decision.split is not None and decision.split.large == Candidate("openvino", "f32")
        assert 16 <= decision.split.above < 2048
        assert isinstance(backend, SplitBackend) and backend.name == "onnxruntime+openvino"
        short = {"input_ids": np.full((1, 8), 2023), "token_type_ids": np.zeros((1, 8), int)}
        short["attention_mask"] = np.ones((1, 8), int)
        full = {name: np.repeat(array, 64, axis=0) for name, array in short.items()}
        assert backend.engine_for(short) is backend.small
        assert backend.engine_for(full) is backend.large
        before = (backend.small.executions, backend.large.executions)
        small_out, large_out = backend.run(short).output, backend.run(full).output
        assert (backend.small.executions, backend.large.executions) == (
            before[0] + 1,
            before[1] + 1,
        )
        # The same text on either engine: the same embedding.
        np.testing.assert_allclose(large_out[0], small_out[0], atol=1e-4)
    finally:
        backend.close()


def test_a_stored_split_is_served_after_a_restart(minilm, tmp_path, reference):
    """A split kept in the state file is read back at load: the tower runs on both engines and
    its embeddings still equal sentence-transformers'."""
    runtime = RuntimeConfig(
        state_dir=str(tmp_path), batching=BatchingConfig(max_tokens=512), packing=False
    )
    entry = Repository(minilm.parent).find(MINILM)
    tower = entry.manifest.towers["text"]
    candidates = list(select(tower, runtime, MINILM).candidates)
    if len(candidates) < 2:
        pytest.skip("OpenVINO is not installed: no second engine to split with")
    key = probe_key(tower, [minilm / tower.onnx], candidates, runtime.threads)
    path = state_file(runtime.state_root(minilm), tower, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = {candidate.label: {"1x16": 1.0, "32x64": 10.0} for candidate in candidates}
    stored = {
        "key": key,
        "choice": ORT,
        "source": "measured",
        "figures": figures,
        "split": {"large": OV, "above": 64},
    }
    path.write_text(json.dumps(stored))
    model = Model.load(entry, runtime)
    exact = Model.load(entry, EXACT)
    try:
        backend = model.text.tower.backend
        assert isinstance(backend, SplitBackend) and backend.decision.source == "cached"
        assert backend.above == 64 and backend.large.name == "openvino"
        texts = ["short", *[f"sentence number {i} with a few more words in it" for i in range(40)]]
        served = embed_texts(model, texts)
        expected = reference.encode(texts, normalize_embeddings=True)
        cosines = np.sum(served * expected, axis=1)
        assert cosines.min() >= 0.9999, cosines.min()
        np.testing.assert_allclose(served, embed_texts(exact, texts), atol=1e-4)
    finally:
        model.close()
        exact.close()


def test_a_stored_split_naming_a_lossy_or_unknown_engine_is_measured_again(minilm, tmp_path):
    from runtime.backends.choice import read_cached

    tower = padded_tower(minilm)
    candidates = [Candidate("onnxruntime", "f32"), Candidate("openvino", "f32")]
    key = probe_key(tower, [minilm / tower.onnx], candidates, 1)
    path = tmp_path / "choice.json"
    base = {"key": key, "choice": ORT, "source": "measured", "figures": {ORT: {"1x16": 1.0}}}
    for split in (
        {"large": "onnxruntime/int8", "above": 9},
        {"large": "tensorrt/f16", "above": 9},
        {"large": OV, "above": "many"},
        {"large": OV, "above": -1},
    ):
        path.write_text(json.dumps({**base, "split": split}))
        assert read_cached(path, key) is None, split
    path.write_text(json.dumps({**base, "split": {"large": OV, "above": 9}}))
    assert read_cached(path, key).split == Split(Candidate("openvino", "f32"), 9)
