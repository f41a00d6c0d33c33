"""Execution statistics per model tower, in Triton's inference-statistics terms.

The figures live in prometheus-client metrics. Under `ingrain-serve` the client runs in its
multiprocess mode (each worker writes its own mmap files), so any worker can sum every live and
dead worker's figures, and counters never go backwards when gunicorn replaces a worker.

What each duration means (all in ns, per tower):
  success         a request's whole time in the tower, from arrival to result ready
  fail            the same, for requests that failed in the tower
  queue           waiting for the tower's executor before execution
  compute_input   preparing a batch: padding into the batch arrays (on GPU: + host-to-device)
  compute_infer   the execution itself
  compute_output  device-to-host and slicing the results back per request
Counts in the inference statistics are requests; counts in the batch statistics are
executions of that batch size. Tokenizing and image fetching/decoding are preprocessing and are
counted apart from compute_input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_STATS = ("compute_input", "compute_infer", "compute_output")

TOWER = ("model", "tower")
INFERENCE_ITEMS = Counter("ingrain_inference_items", "Items inferred.", TOWER)
EXECUTIONS = Counter("ingrain_executions", "Batches executed.", TOWER)
STAT_COUNT = Counter("ingrain_inference_stat_count", "Requests per statistic.", (*TOWER, "stat"))
STAT_NS = Counter("ingrain_inference_stat_ns", "Nanoseconds per statistic.", (*TOWER, "stat"))
BATCH_COUNT = Counter(
    "ingrain_batch_stat_count", "Executions per batch size.", (*TOWER, "batch_size", "stat")
)
BATCH_NS = Counter(
    "ingrain_batch_stat_ns", "Nanoseconds per batch size.", (*TOWER, "batch_size", "stat")
)
PREPROCESS_COUNT = Counter(
    "ingrain_preprocess_count", "Preprocessing calls (tokenize, fetch, decode).", (*TOWER, "step")
)
PREPROCESS_NS = Counter(
    "ingrain_preprocess_ns",
    "Nanoseconds of preprocessing (tokenize, fetch, decode).",
    (*TOWER, "step"),
)
QUEUE_DEADLINE_DROPS = Counter(
    "ingrain_queue_deadline_drops",
    "Requests dropped before execution: their queue wait passed --max-queue-wait-ms.",
    TOWER,
)
CLIENT_GONE_DROPS = Counter(
    "ingrain_client_gone_drops",
    "Requests dropped before execution: their client had closed the connection.",
    TOWER,
)
EXECUTED_TOKENS = Counter(
    "ingrain_executed_tokens",
    "Token positions executed by text towers (rows x row length), padding included.",
    TOWER,
)
PADDING_TOKENS = Counter(
    "ingrain_padding_tokens",
    "Executed token positions that held no text token (padding; packed towers: row tails). "
    "Padding fraction: ingrain_padding_tokens / ingrain_executed_tokens.",
    TOWER,
)
LAST_INFERENCE = Gauge(
    "ingrain_last_inference_ms",
    "Milliseconds since the epoch of the last execution.",
    TOWER,
    multiprocess_mode="max",
)


TOWER_ENGINE = Gauge(
    "ingrain_tower_engine",
    "Above 0 for the backend and precision each tower runs on in live workers (the engines "
    "open per worker: 2 while a republished version is swapped in).",
    (*TOWER, "backend", "precision"),
    multiprocess_mode="livemax",
)


BACKEND_PROBE = Gauge(
    "ingrain_backend_probe_ms",
    "Median milliseconds of one execution per candidate backend and precision and probe shape "
    "(rows x tokens), as `auto` measured them on this host to choose the tower's engine.",
    (*TOWER, "backend", "precision", "shape"),
    multiprocess_mode="livemax",
)


@dataclass
class RequestTimer:
    """Durations one request accumulates over the executions it takes part in."""

    arrival: int = field(default_factory=time.perf_counter_ns)
    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATS[2:], 0))

    def add(self, stat: str, ns: int) -> None:
        self.ns[stat] += ns


class TowerStats:
    def __init__(self, model: str, tower: str) -> None:
        self.labels = (model, tower)
        self._engine: tuple[str, str] | None = None
        # The metric children every request and execution counts in, each looked up once
        # (labels() takes the metric's lock) and only when first counted (a child is a
        # series, shown as 0 rather than absent once it exists).
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        if (child := self._children.get(key)) is None:
            child = self._children[key] = metric.labels(*self.labels, *labels)
        return child

    def engine(self, backend: str | None, precision: str | None = None) -> None:
        """Say which backend and precision the tower runs on now (None: released). Counted up
        and down, not set: the two versions of a model being swapped share these labels."""
        if self._engine is not None:
            TOWER_ENGINE.labels(*self.labels, *self._engine).dec()
        self._engine = None if backend is None else (backend, precision or "")
        if self._engine is not None:
            TOWER_ENGINE.labels(*self.labels, *self._engine).inc()

    def probe(self, figures: dict[str, dict[str, float]]) -> None:
        """The figures `auto` chose this tower's engine by: candidate -> shape -> median ms."""
        for label, shapes in figures.items():
            backend, _, precision = label.partition("/")
            for shape, ms in shapes.items():
                BACKEND_PROBE.labels(*self.labels, backend, precision, shape).set(ms)

    def preprocess(self, step: str, ns: int) -> None:
        self._child(PREPROCESS_COUNT, step).inc()
        self._child(PREPROCESS_NS, step).inc(ns)

    def queue_deadline_drop(self) -> None:
        QUEUE_DEADLINE_DROPS.labels(*self.labels).inc()

    def client_gone_drop(self) -> None:
        CLIENT_GONE_DROPS.labels(*self.labels).inc()

    def execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self._child(EXECUTIONS).inc()
        self._child(INFERENCE_ITEMS).inc(batch_size)
        self._child(LAST_INFERENCE).set(time.time_ns() // 1_000_000)
        size = str(batch_size)
        for stat, ns in zip(BATCH_STATS, (input_ns, infer_ns, output_ns), strict=True):
            self._child(BATCH_COUNT, size, stat).inc()
            self._child(BATCH_NS, size, stat).inc(ns)

    def tokens(self, figures: tuple[int, int] | None) -> None:
        """Count one execution's (executed, real) token positions; None (images) counts none."""
        if figures is not None:
            executed, real = figures
            self._child(EXECUTED_TOKENS).inc(executed)
            self._child(PADDING_TOKENS).inc(executed - real)

    def request(self, timer: RequestTimer, succeeded: bool) -> None:
        elapsed = time.perf_counter_ns() - timer.arrival
        # A failed request counts only as failed: its partial compute would skew the averages.
        recorded = {"success": elapsed, **timer.ns} if succeeded else {"fail": elapsed}
        for stat, ns in recorded.items():
            self._child(STAT_COUNT, stat).inc()
            self._child(STAT_NS, stat).inc(ns)


MODEL_LOADED = Gauge(
    "ingrain_model_loaded_workers",
    "Live worker processes that hold the model.",
    ("model",),
    multiprocess_mode="livesum",
)
