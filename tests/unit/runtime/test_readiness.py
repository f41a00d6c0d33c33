"""Readiness of towers: warm-up, stuck and failing towers, the queue deadline.

Tower-level tests drive the real all-MiniLM-L6-v2 graph in ONNX Runtime through a wrapper that
can hold or fail executions (tests.unit.runtime.test_batching.Recording). The routes' side:
tests/unit/api/test_readiness_routes.py and tests/integration/test_readiness.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from runtime.batching import BatchingConfig
from runtime.batching.stats import TowerStats
from runtime.batching.tower import Tower
from runtime.config import RuntimeConfig
from runtime.errors import QueueDeadline
from runtime.models import ImageEncoder, Model
from runtime.repository import Repository
from runtime.text import TextEncoder, TextOptions
from tests.conftest import CLIP, MINILM
from tests.unit.runtime.test_batching import Recording, make_tower, wait_until


class Faulty(Recording):
    """The real backend, failing every execution while `broken` is set."""

    broken = False

    def run(self, inputs):
        if self.broken:
            raise RuntimeError("injected engine failure")
        return super().run(inputs)


@pytest.fixture(scope="module")
def minilm(engines):
    """MiniLM on its padded graph, which make_tower (test_batching) collates for."""
    config = RuntimeConfig(backend="onnxruntime", threads=2, packing=False)
    return Model.load(Repository(engines).find(MINILM), config)


def ids(minilm, text="hello"):
    return minilm.text.tokenizer.token_ids([text])


def drops() -> float:
    labels = {"model": "batching-test", "tower": "text_encoder"}
    return REGISTRY.get_sample_value("ingrain_queue_deadline_drops_total", labels) or 0.0


def test_a_loaded_model_is_warm_and_ready(minilm):
    assert all(tower.warmed for tower in minilm.towers.values())
    assert minilm.not_ready(60.0, 3) is None


@pytest.mark.parametrize(
    ("max_tokens", "largest"),
    [(2048, (8, 256)), (128, (1, 128))],
    ids=["rows of the maximum length", "one row of the budget, shorter than the maximum"],
)
def test_warm_up_runs_the_largest_execution_then_the_smallest(minilm, max_tokens, largest):
    """The largest execution the token budget allows, so that memory pools are at their
    high-water mark before the model counts as ready; then one empty text, the input that
    probes a failing tower (tested below)."""
    recording = Recording(minilm.text.tower.backend)
    tower = make_tower(minilm, recording, rows=True, max_tokens=max_tokens)
    try:
        TextEncoder(tower, minilm.text.tokenizer, None).warm_up()
        assert recording.shapes == [largest, (1, 2)]
        assert tower.check(60.0, 3) is None
    finally:
        tower.close()


class ShortPlan(Recording):
    """The real backend, refusing texts past 64 tokens as a TensorRT plan built for shorter
    texts than the tokenizer allows refuses them (runtime.backends.tensorrt.plan)."""

    def run(self, inputs):
        width = next(iter(inputs.values())).shape[1]
        if width > 64:
            raise ValueError(f"no optimization profile takes sequence {width}")
        return super().run(inputs)


def test_a_largest_shape_the_engine_refuses_is_logged_and_the_model_still_serves(minilm, caplog):
    tower = make_tower(minilm, ShortPlan(minilm.text.tower.backend), rows=True)
    try:
        encoder = TextEncoder(tower, minilm.text.tokenizer, None)
        encoder.warm_up()
        assert tower.check(60.0, 3) is None
        assert "no optimization profile takes sequence 256" in caplog.text
        assert "requests that large will fail" in caplog.text
        rows = encoder.rows(["a short text"], TextOptions())
        # The same embedding as the model's own tower gives (the shape was refused, not the engine).
        assert np.array_equal(encoder.embed(rows), minilm.text.embed(rows))
    finally:
        tower.close()


def test_an_image_tower_warms_up_with_a_full_batch_then_one_image(engines):
    clip = Model.load(Repository(engines).find(CLIP), RuntimeConfig(backend="onnxruntime"))
    real = clip.image.tower
    recording = Recording(real.backend)
    tower = Tower(real.spec, recording, TowerStats(CLIP, "image_encoder"), real.collate)
    try:
        ImageEncoder(tower, clip.image.spec, clip.image.fetcher, 10**6).warm_up()
        height, width = clip.image.spec.size
        assert recording.shapes == [(real.spec.max_batch, 3, height, width), (1, 3, height, width)]
    finally:
        tower.close()
        clip.close()


def test_a_tower_is_not_ready_until_warmed_up(minilm):
    tower = make_tower(minilm, Recording(minilm.text.tower.backend))
    try:
        assert tower.check(60.0, 3) == "not warmed up yet"
        tower.warm_up(ids(minilm, ""))
        assert tower.check(60.0, 3) is None
    finally:
        tower.close()


def test_a_stuck_execution_marks_the_tower_not_ready_until_it_ends(minilm):
    backend = Recording(minilm.text.tower.backend)
    tower = make_tower(minilm, backend)
    tower.warm_up(ids(minilm, ""))
    backend.entered.acquire()  # the warm-up's execution
    backend.gate.clear()
    request = threading.Thread(target=tower.infer, args=(ids(minilm),))
    request.start()
    try:
        backend.entered.acquire()  # the request, now held inside the engine
        wait_until(lambda: tower.check(0.01, 3) is not None, "the 10 ms limit passes")
        reason = tower.check(0.01, 3)
        assert reason is not None and "an execution has been running for" in reason
    finally:
        backend.gate.set()
        request.join(timeout=120)
    assert tower.check(0.01, 3) is None
    tower.close()


def test_failing_executions_mark_the_tower_not_ready_until_a_probe_succeeds(minilm):
    backend = Faulty(minilm.text.tower.backend)
    tower = make_tower(minilm, backend)
    try:
        tower.warm_up(ids(minilm, ""))
        backend.broken = True
        for _ in range(3):
            with pytest.raises(RuntimeError, match="injected"):
                tower.infer(ids(minilm))
        reason = tower.check(60.0, 3)
        assert reason is not None and "last 3 executions failed: injected" in reason
        backend.broken = False
        # The check queued a probe execution (the warm-up input); once it ran, the tower is ready.
        deadline = time.monotonic() + 30
        while tower.check(60.0, 3) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tower.check(60.0, 3) is None
    finally:
        tower.close()


def test_a_request_queued_past_the_deadline_is_dropped_before_execution(minilm):
    backend = Recording(minilm.text.tower.backend)
    tower = make_tower(minilm, backend)
    try:
        tower.warm_up(ids(minilm, ""))
        before = drops()
        backend.gate.clear()
        first = threading.Thread(target=tower.infer, args=(ids(minilm),))
        first.start()
        backend.entered.acquire()  # the warm-up's execution
        backend.entered.acquire()  # the first request, now held inside the engine
        # The deadline applies from here on, so only the request queued behind can miss it.
        tower.batcher.config = BatchingConfig(max_queue_wait_s=0.01)
        outcome: list[BaseException | None] = []

        def late() -> None:
            try:
                tower.infer(ids(minilm, "queued behind"))
                outcome.append(None)
            except QueueDeadline as error:
                outcome.append(error)

        second = threading.Thread(target=late)
        second.start()
        # Its own deadline answers it while the first request still holds the engine.
        second.join(timeout=60)
        assert not second.is_alive(), "the queued request was not answered at its deadline"
        executed = len(backend.sizes)
        backend.gate.set()
        first.join(timeout=120)
        assert isinstance(outcome[0], QueueDeadline) and "dropped before execution" in str(
            outcome[0]
        )
        assert len(backend.sizes) == executed + 1  # only the first request ran
        assert drops() == before + 1
        tower.batcher.config = BatchingConfig()
        assert tower.infer(ids(minilm)).shape == (1, 384)  # the executor serves on
    finally:
        tower.close()
