"""The dynamic batcher, driving the real all-MiniLM-L6-v2 graph in ONNX Runtime.

A recording wrapper around the real backend notes each execution's batch size and, where a
test needs requests to pile up, holds executions until the test releases them.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest

from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.batching import BatchingConfig
from runtime.batching.stats import TowerStats
from runtime.batching.tower import Tower
from runtime.config import RuntimeConfig
from runtime.errors import Overloaded, QueueDeadline
from runtime.models import Model
from runtime.repository import Repository
from runtime.text import TextEncoder, TextOptions, collate_rows
from tests.conftest import MINILM, serve_in_process


class Recording:
    """The real backend, plus a record of batch sizes and input shapes, and an optional gate on
    executions."""

    def __init__(self, backend: OnnxRuntimeBackend) -> None:
        self.backend = backend
        self.name, self.precision = backend.name, backend.precision
        self.bucket_widths = backend.bucket_widths
        self.packed_tokens = backend.packed_tokens
        self.sizes: list[int] = []
        self.shapes: list[tuple[int, ...]] = []
        self.token_rows: list[np.ndarray] = []  # each execution's first input (token ids)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)

    def run(self, inputs):
        self.entered.release()
        self.gate.wait(timeout=120)  # bounded: a test that never opens it fails, not hangs
        self.sizes.append(len(next(iter(inputs.values()))))
        self.shapes.append(next(iter(inputs.values())).shape)
        self.token_rows.append(next(iter(inputs.values())))
        return self.backend.run(inputs)

    def close(self):
        pass  # the module's model owns the real backend


@pytest.fixture(scope="module")
def minilm(engines):
    """MiniLM on its padded graph, whose batch sizes and shapes these tests count."""
    config = RuntimeConfig(backend="onnxruntime", threads=2, packing=False)
    return Model.load(Repository(engines).find(MINILM), config)


def make_tower(minilm, recording, rows=False, **batching) -> Tower:
    """A tower of MiniLM's text graph on `recording`, for lists of token ids, or for the
    TokenRows that TextEncoder sends with `rows`."""
    encoder = minilm.text
    names = encoder.tower.input_names
    collate = partial(collate_rows, encoder.tokenizer, names) if rows else None
    return Tower(
        encoder.tower.spec,
        recording,
        TowerStats("batching-test", "text_encoder"),
        collate or (lambda items: encoder.tokenizer.batch(items, names)),
        BatchingConfig(**batching),
    )


@pytest.fixture
def recording(minilm):
    return Recording(minilm.text.tower.backend)


def token_ids(minilm, texts):
    return minilm.text.tokenizer.token_ids(texts)


def unbatched(minilm, recording, texts) -> np.ndarray:
    """Each text run alone through the same backend."""
    names = minilm.text.tower.input_names
    rows = [
        recording.backend.run(minilm.text.tokenizer.batch([ids], names)).output
        for ids in token_ids(minilm, texts)
    ]
    return np.concatenate(rows)


def test_concurrent_requests_lose_nothing_and_match_unbatched_results(minilm, recording):
    rng = random.Random(7)
    words = "the quick brown fox jumps over a lazy dog while markets rally and rain falls"
    words = words.split()
    requests_ = [
        [" ".join(rng.choices(words, k=rng.randint(1, 40))) for _ in range(rng.randint(1, 5))]
        for _ in range(60)
    ]
    tower = make_tower(minilm, recording, max_delay_s=0.005)

    def run(texts):
        ids = token_ids(minilm, texts)
        return tower.infer(ids, [len(row) for row in ids])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, requests_))
    tower.close()
    assert sum(recording.sizes) == sum(len(texts) for texts in requests_)
    assert max(recording.sizes) > 1, "concurrent requests were never merged"
    for texts, result in zip(requests_, results, strict=True):
        assert np.abs(result - unbatched(minilm, recording, texts)).max() < 1e-5


def test_requests_queued_while_the_engine_runs_are_merged(minilm, recording):
    tower = make_tower(minilm, recording, max_delay_s=0.05)
    recording.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        first = pool.submit(tower.infer, token_ids(minilm, ["first"]), [3])
        recording.entered.acquire()  # the first execution has started and is held
        others = [
            pool.submit(tower.infer, token_ids(minilm, [f"text {i}"]), [4]) for i in range(10)
        ]
        while tower.batcher.queued < 10:  # all ten are waiting behind the held execution
            threading.Event().wait(0.001)
        recording.gate.set()
        first.result(timeout=120)
        [future.result(timeout=120) for future in others]
    tower.close()
    assert recording.sizes == [1, 10]


def test_a_lone_request_on_an_idle_engine_does_not_wait(minilm, recording):
    tower = make_tower(minilm, recording, max_delay_s=3600)  # any wait would fail the test
    ids = token_ids(minilm, ["alone"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(tower.infer, ids, [len(ids[0])])
        try:
            assert answer.result(timeout=60).shape == (1, 384)
        finally:
            tower.close()  # ends a batching wait too: the test fails instead of hanging
    assert recording.sizes == [1]


def test_large_requests_are_split_and_reassembled_in_order(minilm, recording):
    texts = [f"sentence number {i} " * (1 + i % 3) for i in range(70)]
    tower = make_tower(minilm, recording, execution_overhead_tokens=10**6)
    ids = token_ids(minilm, texts)
    result = tower.infer(ids, [len(row) for row in ids])
    tower.close()
    assert len(recording.sizes) == 3 and max(recording.sizes) <= 32
    assert np.abs(result - unbatched(minilm, recording, texts)).max() < 1e-5


def test_the_token_budget_limits_each_execution(minilm, recording):
    texts = ["one two three four five six seven eight nine ten eleven twelve thirteen"] * 10
    ids = token_ids(minilm, texts)
    width = len(ids[0])
    tower = make_tower(minilm, recording, max_tokens=4 * width)
    tower.infer(ids, [len(row) for row in ids])
    tower.close()
    assert sorted(recording.sizes) == [2, 4, 4]


def test_short_and_long_texts_run_in_separate_executions(minilm, recording):
    texts = ["short"] * 6 + ["a very long text that keeps going and going " * 12] * 6
    random.Random(1).shuffle(texts)
    ids = token_ids(minilm, texts)
    tower = make_tower(minilm, recording)
    result = tower.infer(ids, [len(row) for row in ids])
    tower.close()
    assert sorted(recording.sizes) == [6, 6]
    assert np.abs(result - unbatched(minilm, recording, texts)).max() < 1e-5


def test_text_queued_beyond_one_execution_is_sorted_by_length_across_requests(minilm, recording):
    """Four requests of 16 short and 16 long texts each, queued behind a held execution: the
    executor takes them together and runs the short ones apart from the long ones (each
    request alone would run as two executions of 16)."""
    mixed = ["short"] * 16 + ["a very long text that keeps going and going " * 6] * 16
    tower = make_tower(minilm, recording, max_delay_s=0.05)
    recording.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        first = pool.submit(tower.infer, token_ids(minilm, ["first"]), [3])
        recording.entered.acquire()
        ids = token_ids(minilm, mixed)
        others = [pool.submit(tower.infer, ids, [len(row) for row in ids]) for _ in range(4)]
        while tower.batcher.queued < 4 * len(mixed):
            threading.Event().wait(0.001)
        recording.gate.set()
        first.result(timeout=120)
        results = [future.result(timeout=120) for future in others]
    tower.close()
    assert recording.sizes == [1, 32, 32, 32, 32]
    expected = unbatched(minilm, recording, mixed)
    for result in results:
        assert np.abs(result - expected).max() < 1e-5


def test_a_full_queue_refuses_at_once(minilm, recording):
    tower = make_tower(minilm, recording, max_queue=4)
    recording.gate.clear()
    ids = token_ids(minilm, ["x"])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(tower.infer, ids, [3])
        recording.entered.acquire()
        queued = pool.submit(tower.infer, ids * 4, [3] * 4)
        while tower.batcher.queued < 4:
            threading.Event().wait(0.001)
        with pytest.raises(Overloaded, match="limit 4"):
            tower.infer(ids, [3])
        recording.gate.set()
        assert running.result(timeout=120).shape == (1, 384)
        assert queued.result(timeout=120).shape == (4, 384)
    tower.close()


def test_an_overloaded_server_answers_503_with_retry_after(engines, tmp_path):
    flags = ("--max-queue", "8", "--max-items", "8")
    long_texts = ["a long sentence about nothing in particular " * 30] * 8
    with (
        serve_in_process(engines, tmp_path, *flags) as app,
        concurrent.futures.ThreadPoolExecutor(12) as pool,
    ):
        body = {"name": MINILM, "text": long_texts}
        responses = list(pool.map(lambda _: app.post("/embed_text", json=body), range(24)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
    refused = next(response for response in responses if response.status_code == 503)
    assert refused.headers["Retry-After"] == "1"
    assert "overloaded" in refused.json["error"]


def test_metrics_queue_is_the_wait_in_the_batcher(app):
    before = app.get("/metrics").json
    app.post("/embed_text", json={"name": MINILM, "text": ["one", "two"]})
    after = app.get("/metrics").json

    def stat(body, name, field):
        [entry] = [e for e in body["modelStats"] if e["name"] == MINILM]
        return int(entry["inferenceStats"][name][field] or 0)

    assert stat(after, "queue", "count") == stat(before, "queue", "count") + 1
    queue, infer, whole = (
        stat(after, name, "ns") - stat(before, name, "ns")
        for name in ("queue", "compute_infer", "success")
    )
    # The wait before execution: part of the request's whole time, apart from the execution.
    assert queue > 0 and queue + infer <= whole


def wait_until(condition, what: str, timeout_s: float = 60) -> None:
    """Poll `condition` (a queue's state) with a bound, instead of sleeping and hoping."""
    deadline = threading.Event()
    timer = threading.Timer(timeout_s, deadline.set)
    timer.start()
    try:
        while not condition():
            if deadline.wait(0.001):
                raise AssertionError(f"not within {timeout_s} s: {what}")
    finally:
        timer.cancel()


@contextmanager
def held(recording) -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Executions held at the gate until the block opens it, with threads to queue requests
    behind them; the gate opens on the way out whatever happens, so a failing test fails
    instead of waiting forever for its threads."""
    recording.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        try:
            yield pool
        finally:
            recording.gate.set()


def executions_holding(recording, ids: list[int]) -> list[int]:
    """The indices of the recorded executions that ran the token ids `ids` (one text)."""
    return [
        number
        for number, rows in enumerate(recording.token_rows)
        if any(list(row[: len(ids)]) == ids and not row[len(ids) :].any() for row in rows)
    ]


LONG_REQUEST = [f"sentence number {i} about the weather and the markets" for i in range(100)]
# Longer than any text of LONG_REQUEST: sorting by length alone would run it last.
SMALL_REQUEST = ["zebra giraffe " * 20]


def test_a_small_request_behind_a_large_one_runs_in_the_next_execution(minilm, recording):
    """One request of 100 texts (four executions of 32 at most), then a one-text request, both
    queued behind a held execution: the small one runs in the first execution after it, not
    after the whole large request."""
    tower = make_tower(minilm, recording, max_delay_s=0.05)
    large, small = token_ids(minilm, LONG_REQUEST), token_ids(minilm, SMALL_REQUEST)
    finished: list[str] = []
    with held(recording) as pool:
        first = pool.submit(tower.warm_up, token_ids(minilm, ["first"]), [3])
        recording.entered.acquire()  # the first execution has started and is held
        big = pool.submit(tower.infer, large, [len(row) for row in large])
        wait_until(lambda: tower.batcher.queued == len(large), "the large request is queued")
        one = pool.submit(tower.infer, small, [len(small[0])])
        wait_until(lambda: tower.batcher.queued == len(large) + 1, "both are queued")
        big.add_done_callback(lambda _: finished.append("large"))
        one.add_done_callback(lambda _: finished.append("small"))
        recording.gate.set()
        first.result(timeout=60)
        results = big.result(timeout=120), one.result(timeout=120)
    tower.close()
    assert executions_holding(recording, small[0]) == [1]
    assert finished == ["small", "large"]
    assert np.abs(results[0] - unbatched(minilm, recording, LONG_REQUEST)).max() < 1e-5
    assert np.abs(results[1] - unbatched(minilm, recording, SMALL_REQUEST)).max() < 1e-5


def test_a_request_arriving_while_a_large_one_runs_waits_one_execution(minilm, recording):
    """The large request alone is taken as one sort window of several executions; a one-text
    request arriving during its first execution runs in the next one, and the rest of the
    large request still comes back whole and in order."""
    tower = make_tower(minilm, recording)
    large, small = token_ids(minilm, LONG_REQUEST), token_ids(minilm, SMALL_REQUEST)
    with held(recording) as pool:
        big = pool.submit(tower.infer, large, [len(row) for row in large])
        recording.entered.acquire()  # the large request's first execution is held
        assert tower.batcher.queued == 0, "the whole large request was taken at once"
        one = pool.submit(tower.infer, small, [len(small[0])])
        wait_until(lambda: tower.batcher.queued == 1, "the small request is queued")
        recording.gate.set()
        results = big.result(timeout=120), one.result(timeout=120)
    tower.close()
    assert executions_holding(recording, small[0]) == [1]
    assert sum(recording.sizes) == len(large) + 1
    assert np.abs(results[0] - unbatched(minilm, recording, LONG_REQUEST)).max() < 1e-5


def test_a_queued_request_gets_its_deadline_answer_wherever_it_waits(minilm, recording):
    """A large and then a small request queued behind a held execution, with a 50 ms
    deadline: both are answered with QueueDeadline while the execution is still held (not
    when they would reach the head of the queue), and neither ever executes."""
    tower = make_tower(minilm, recording, max_queue_wait_s=0.05)
    large, small = token_ids(minilm, LONG_REQUEST), token_ids(minilm, SMALL_REQUEST)
    with held(recording) as pool:
        # A warm-up: it has no deadline, so it holds the executor as long as the gate does.
        first = pool.submit(tower.warm_up, token_ids(minilm, ["first"]), [3])
        recording.entered.acquire()
        big = pool.submit(tower.infer, large, [len(row) for row in large])
        one = pool.submit(tower.infer, small, [len(small[0])])
        for future in (one, big):
            with pytest.raises(QueueDeadline, match="dropped before execution"):
                future.result(timeout=60)
        assert tower.batcher.queued == 0
        assert len(recording.sizes) == 0  # the held execution has not even finished
        recording.gate.set()
        first.result(timeout=60)
    assert tower.infer(small, [len(small[0])]).shape == (1, 384)  # the executor serves on
    tower.close()
    assert recording.sizes == [1, 1]
    assert executions_holding(recording, small[0]) == [1]


class CountingTokenizer:
    """The model's tokenizer, counting the texts it encodes."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.encoded = 0

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)

    def encode(self, texts, direction):
        self.encoded += len(texts)
        return self.tokenizer.encode(texts, direction)


def test_a_full_queue_refuses_before_tokenising(minilm, recording):
    tower = make_tower(minilm, recording, rows=True, max_queue=4)
    tokenizer = CountingTokenizer(minilm.text.tokenizer)
    encoder = TextEncoder(tower, tokenizer, minilm.text.prompts)
    rows = encoder.rows(["x"], TextOptions())
    with held(recording) as pool:
        running = pool.submit(encoder.embed, rows)
        recording.entered.acquire()
        queued = pool.submit(encoder.embed, rows * 4)
        wait_until(lambda: tower.batcher.queued == 4, "the queue is full")
        before = tokenizer.encoded
        with pytest.raises(Overloaded, match="limit 4"):
            encoder.rows(["a text that is never tokenised"] * 2, TextOptions())
        assert tokenizer.encoded == before
        recording.gate.set()
        assert running.result(timeout=60).shape == (1, 384)
        assert queued.result(timeout=60).shape == (4, 384)
    tower.close()
