"""`--backend auto` on the CPU: the fastest lossless backend and precision, measured per tower
and host, cached across restarts and measured again when the model or a backend changes."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from cli import main
from runtime.backends import Candidate, select
from runtime.backends.choice import choose, decide, measure, probe_inputs, probe_shapes
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.batching import BatchingConfig
from runtime.config import RuntimeConfig
from runtime.models import Model
from runtime.repository import Repository, slugify
from runtime.repository.manifest import Manifest
from tests.conftest import CLIP, MINILM, copy_tree

ORT, OV, OV_BF16 = "onnxruntime/f32", "openvino/f32", "openvino/bf16"


def test_choose_takes_the_lowest_geometric_mean_over_the_probe_shapes():
    figures = {
        ORT: {"1x16": 2.0, "32x64": 40.0},  # geometric mean 8.9
        OV: {"1x16": 4.0, "32x64": 30.0},  # 11.0: faster on the batch, slower overall
        OV_BF16: {"1x16": 3.0, "32x64": 20.0},  # 7.7
    }
    assert choose(figures) == Candidate("openvino", "bf16")
    del figures[OV_BF16]
    assert choose(figures) == Candidate("onnxruntime", "f32")


def test_int8_is_measured_but_never_chosen():
    figures = {"onnxruntime/int8": {"1x16": 0.5, "32x64": 5.0}, ORT: {"1x16": 2.0, "32x64": 40.0}}
    assert choose(figures) == Candidate("onnxruntime", "f32")
    with pytest.raises(ValueError, match="no lossless candidate"):
        choose({"onnxruntime/int8": {"1x16": 1.0}})


class Repeated:
    """A real backend that runs every batch `times` times: a large, deterministic handicap."""

    def __init__(self, backend, times: int) -> None:
        self.backend, self.times = backend, times
        self.name, self.precision = backend.name, backend.precision
        self.bucket_widths = backend.bucket_widths
        self.packed_tokens = backend.packed_tokens

    def run(self, inputs):
        for _ in range(self.times - 1):
            self.backend.run(inputs)
        return self.backend.run(inputs)

    def close(self):
        self.backend.close()


@pytest.fixture(scope="module")
def minilm(engines) -> Path:
    return engines / slugify(MINILM)


@pytest.fixture(scope="module")
def tiny(engines) -> Path:
    """The tiny CLIP's engine: a text tower that probes in a fraction of a second, for tests of
    the state file's handling rather than of which backend wins."""
    return engines / slugify(CLIP)


def tower_of(directory: Path):
    return Manifest.read(directory).towers["text"]


@pytest.mark.parametrize("slow", ["onnxruntime", "openvino"])
def test_auto_picks_the_other_backend_when_one_is_made_slower(minilm, slow):
    """Both backends for real on MiniLM; the one handicapped runs each batch four times."""
    from runtime.backends.openvino import OpenVinoBackend

    tower = tower_of(minilm)

    def opener(candidate: Candidate):
        if candidate.backend == "openvino":
            backend = OpenVinoBackend(minilm / tower.onnx, "f32", 1)
        else:
            backend = OnnxRuntimeBackend(minilm / tower.onnx, threads=1)
        return Repeated(backend, 4) if candidate.backend == slow else backend

    candidates = [Candidate("onnxruntime", "f32"), Candidate("openvino", "f32")]
    decision, backend = decide(None, tower, [minilm / tower.onnx], candidates, 1, opener)
    try:
        assert decision.source == "measured"
        assert decision.choice.backend != slow and backend.name != slow
        assert set(decision.figures) == {ORT, OV}
        assert all(set(shapes) == {"1x16", "32x64"} for shapes in decision.figures.values())
    finally:
        backend.close()


def test_measure_runs_every_candidate_on_every_shape_and_returns_medians(minilm):
    tower = tower_of(minilm)
    backend = OnnxRuntimeBackend(minilm / tower.onnx, threads=1)
    try:
        inputs = {
            f"{rows}x{tokens}": probe_inputs(tower, rows, tokens)
            for rows, tokens in probe_shapes(tower)
        }
        assert inputs["32x64"]["input_ids"].shape == (32, 64)
        assert np.all(inputs["1x16"]["attention_mask"] == 1)
        figures = measure({ORT: backend}, inputs, min_rounds=3, max_rounds=3)
    finally:
        backend.close()
    assert set(figures[ORT]) == {"1x16", "32x64"} and all(v > 0 for v in figures[ORT].values())


def load(directory: Path, state: Path) -> Model:
    # The padded graph (text.onnx), which the cache test rewrites; packed towers are keyed the
    # same way by their own file.
    runtime = RuntimeConfig(
        state_dir=str(state), batching=BatchingConfig(max_tokens=512), packing=False
    )
    return Model.load(Repository(directory.parent).find(Manifest.read(directory).name), runtime)


def decision_of(directory: Path, state: Path):
    model = load(directory, state)
    try:
        return model.text.tower.backend.decision
    finally:
        model.close()


def test_the_choice_is_cached_reused_and_measured_again_when_model_or_backend_change(
    tiny, tmp_path
):
    directory = tmp_path / "engines" / tiny.name
    copy_tree(tiny, directory)
    state = tmp_path / "state"
    first = decision_of(directory, state)
    assert first.source == "measured" and {ORT, OV} <= set(first.figures)
    (stored,) = (state / tiny.name).glob("backend-choice-text-*.json")
    record = json.loads(stored.read_text())
    assert record["choice"] == first.choice.label and record["figures"] == first.figures
    assert record["key"]["files"]["text.onnx"] and record["key"]["onnxruntime"]

    again = decision_of(directory, state)  # a restart: nothing probed
    assert again.source == "cached" and again.choice == first.choice
    assert again.figures == first.figures

    # A choice stored under another ONNX Runtime version is not reused.
    record["key"]["onnxruntime"] = "0.0.1"
    stored.write_text(json.dumps(record))
    assert decision_of(directory, state).source == "measured"
    assert decision_of(directory, state).source == "cached"

    # A changed model file (same graph, new bytes) is measured again.
    graph = onnx.load(str(directory / "text.onnx"))
    graph.doc_string = "rebuilt"
    onnx.save(graph, str(directory / "text.onnx"))
    assert decision_of(directory, state).source == "measured"


def test_workers_loading_at_once_probe_once(tiny, tmp_path):
    tower = tower_of(tiny)
    opened: list[str] = []

    def opener(candidate: Candidate):
        opened.append(candidate.label)
        return OnnxRuntimeBackend(tiny / tower.onnx, threads=1)

    candidates = [Candidate("onnxruntime", "f32"), Candidate("openvino", "f32")]
    results = []

    def load_one():
        decision, backend = decide(tmp_path, tower, [tiny / tower.onnx], candidates, 1, opener)
        backend.close()
        results.append(decision.source)

    threads = [threading.Thread(target=load_one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(results) == ["cached", "measured"]
    assert len(opened) == 3  # both candidates once for the probe, the choice once for the other


def test_explicit_flags_win_and_nothing_is_measured(minilm):
    tower = tower_of(minilm)
    for backend, precision in (("onnxruntime", "f32"), ("openvino", "f32"), ("auto", "bf16")):
        selection = select(tower, RuntimeConfig(backend=backend, precision=precision), MINILM)
        assert selection.candidates == ()
    auto = select(tower, RuntimeConfig(), MINILM, minilm)
    assert Candidate("onnxruntime", "f32") in auto.candidates
    assert Candidate("openvino", "f32") in auto.candidates


def test_ingrain_list_says_whether_the_choice_was_measured(tiny, tmp_path):
    engines = tmp_path / "engines"
    copy_tree(tiny, engines / tiny.name)
    before = CliRunner().invoke(main, ["list", "--engines", str(engines)])
    assert before.exit_code == 0 and "(unmeasured)" in before.output, before.output
    # Loaded with the defaults `ingrain list` assumes (every core, the choice in the engine).
    model = Model.load(Repository(engines).find(CLIP), RuntimeConfig())
    decision = model.text.tower.backend.decision
    model.close()
    runs = decision.choice.label
    if decision.split is not None:  # two engines: the second for executions past `above`
        runs += f",>{decision.split.above}:{decision.split.large.label}"
    after = CliRunner().invoke(main, ["list", "--engines", str(engines)])
    assert after.exit_code == 0 and f"{runs}(measured)" in after.output, after.output


def _lossy_choice(stored: Path) -> None:
    record = json.loads(stored.read_text())
    stored.write_text(json.dumps({**record, "choice": "onnxruntime/int8"}))


def _unknown_backend(stored: Path) -> None:
    record = json.loads(stored.read_text())
    stored.write_text(json.dumps({**record, "choice": "tensorrt/f16"}))


def _figures_not_numbers(stored: Path) -> None:
    record = json.loads(stored.read_text())
    stored.write_text(json.dumps({**record, "figures": {ORT: {"1x16": "fast"}}}))


def _pipe(stored: Path) -> None:
    stored.unlink()
    os.mkfifo(stored)


def _link_to_endless_device(stored: Path) -> None:
    stored.unlink()
    stored.symlink_to("/dev/zero")


def _lock_is_a_pipe(stored: Path) -> None:
    stored.unlink()
    lock = stored.with_suffix(".lock")
    lock.unlink(missing_ok=True)
    os.mkfifo(lock)


@pytest.mark.parametrize(
    "spoil",
    [
        _lossy_choice,
        _unknown_backend,
        _figures_not_numbers,
        _pipe,
        _link_to_endless_device,
        _lock_is_a_pipe,
    ],
)
def test_a_hostile_state_file_is_measured_again_never_trusted_or_waited_on(tiny, tmp_path, spoil):
    """A stored choice that `auto` could not have made (a lossy or unknown candidate, figures
    that are not milliseconds) or a state file or lock that is not a small regular file (a
    pipe nobody writes, a link to /dev/zero) is measured again: it neither picks the engine,
    nor fails the load, nor blocks it."""
    tower = tower_of(tiny)
    opened: list[str] = []

    def opener(candidate: Candidate):
        opened.append(candidate.label)
        if candidate != Candidate("onnxruntime", "f32"):
            raise AssertionError(f"{candidate.label} is not a candidate")
        return OnnxRuntimeBackend(tiny / tower.onnx, threads=1)

    candidates = [Candidate("onnxruntime", "f32")]
    files = [tiny / tower.onnx]
    decision, backend = decide(tmp_path, tower, files, candidates, 1, opener)
    backend.close()
    (stored,) = tmp_path.glob("backend-choice-*.json")
    spoil(stored)
    results: list = []

    def load_again():
        try:
            results.append(decide(tmp_path, tower, files, candidates, 1, opener))
        except Exception as error:
            results.append(error)

    loader = threading.Thread(target=load_again, daemon=True)
    loader.start()
    loader.join(timeout=120)
    assert not loader.is_alive(), "the load waited on the state file"
    ((decision, backend),) = results
    backend.close()
    assert decision.source == "measured" and decision.choice == Candidate("onnxruntime", "f32")
    decision.summary()
