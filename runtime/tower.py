"""One exported network and its backend: runs batches, records their timings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from runtime.backends import Backend
from runtime.manifest import TowerSpec
from runtime.stats import BATCH_STATS, RequestTimer, TowerStats

BatchMaker = Callable[[list[int]], dict[str, np.ndarray]]


class Tower:
    """Executions are serialised per tower: the backend already uses every core it was given,
    so running two batches at once would only oversubscribe them."""

    def __init__(self, spec: TowerSpec, backend: Backend, stats: TowerStats) -> None:
        self.spec = spec
        self.backend = backend
        self.stats = stats
        self.input_names = [tensor.name for tensor in spec.inputs]
        self._executor = threading.Lock()

    def infer(
        self, count: int, make_batch: BatchMaker, order: list[int] | None = None
    ) -> np.ndarray:
        """Run `count` items in batches of at most the profile's max batch, in `order`.

        `make_batch` builds the named inputs for a list of item indices. Returns one output row
        per item, in item order. The whole call is one request in the statistics.
        """
        timer = RequestTimer()
        try:
            outputs = self._run(count, make_batch, order or list(range(count)), timer)
        except BaseException:
            self.stats.request(timer, succeeded=False)
            raise
        self.stats.request(timer, succeeded=True)
        return outputs

    def _run(
        self, count: int, make_batch: BatchMaker, order: list[int], timer: RequestTimer
    ) -> np.ndarray:
        outputs = np.empty((count, self.spec.dim), dtype=np.float32)
        for start in range(0, count, self.spec.max_batch):
            chunk = order[start : start + self.spec.max_batch]
            waiting = time.perf_counter_ns()
            with self._executor:
                began = time.perf_counter_ns()
                batch = make_batch(chunk)
                prepared = time.perf_counter_ns()
                result = self.backend.run(batch)
                executed = time.perf_counter_ns()
                outputs[chunk] = result
                finished = time.perf_counter_ns()
            durations = (prepared - began, executed - prepared, finished - executed)
            self.stats.execution(len(chunk), *durations)
            timer.add("queue", began - waiting)
            for stat, ns in zip(BATCH_STATS, durations, strict=True):
                timer.add(stat, ns)
        return outputs
