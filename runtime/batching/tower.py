"""One exported network and its backend, fed by a dynamic batcher.

Request threads queue their items; one executor thread per tower merges items from concurrent
requests into executions of at most the profile's max batch (and, for text, a padded-token
budget), runs them one at a time (the backend already uses every core it was given), and
hands each request its rows back in order. A request larger than the max batch is split.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.backends import Backend
from runtime.batching import BatchingConfig
from runtime.batching.client import IsGone, client_gone
from runtime.batching.stats import (
    BATCH_STATS,
    CLIENT_GONE_DROPS,
    QUEUE_DEADLINE_DROPS,
    RequestTimer,
    TowerStats,
)
from runtime.errors import ClientGone, ModelUnavailable, Overloaded, QueueDeadline
from runtime.repository.manifest import TowerSpec

Collate = Callable[[list[Any]], dict[str, np.ndarray]]


@dataclass
class _Request:
    items: Sequence[Any]
    lengths: Sequence[int] | None
    outputs: np.ndarray
    timer: RequestTimer = field(default_factory=RequestTimer)
    taken: int = 0
    remaining: int = 0
    started: bool = False
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    # Warm-up and readiness probes: run like any request, but outside the metrics.
    counted: bool = True
    # Whether its client has closed the connection (None: cannot tell).
    is_gone: IsGone | None = None


class Tower:
    def __init__(
        self,
        spec: TowerSpec,
        backend: Backend,
        stats: TowerStats,
        collate: Collate,
        batching: BatchingConfig | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.stats = stats
        self.collate = collate
        self.batching = batching or BatchingConfig()
        self.input_names = [tensor.name for tensor in spec.inputs]
        stats.engine(backend.name, backend.precision)
        self._pending: deque[_Request] = deque()
        self._queued = 0
        self._busy = False
        self._closed = False
        self._wake = threading.Condition()
        # Health, for readiness: set by the executor thread, read by anyone.
        self.warmed = False
        self.executing_since: float | None = None  # time.monotonic() of the running execution
        self.failures = 0  # consecutive failed executions
        self.last_error: BaseException | None = None
        self._probe: tuple[Sequence[Any], Sequence[int] | None] | None = None
        self._probing: _Request | None = None
        self._executor = threading.Thread(target=self._run, name="tower-executor", daemon=True)
        self._executor.start()

    def infer(self, items: Sequence[Any], lengths: Sequence[int] | None = None) -> np.ndarray:
        """One output row per item, in order. `lengths` (token counts) groups text by length.

        Raises Overloaded when the queue cannot take the items, QueueDeadline when they waited
        longer than the batching config's max_queue_wait_s before execution, ClientGone when
        the caller's client (the API's `client_gone` check) had left before they executed.
        """
        request = self._submit(items, lengths)
        request.done.wait()
        self.stats.request(request.timer, succeeded=request.error is None)
        if request.error is not None:
            raise request.error
        return request.outputs

    def warm_up(self, items: Sequence[Any], lengths: Sequence[int] | None = None) -> None:
        """Run `items` once through the executor and the engine (outside the metrics), so the
        first real request pays no first-execution cost; raise what the execution raised.
        The same input is the probe `check` re-runs after failures."""
        self._probe = (items, lengths)
        request = self._submit(items, lengths, counted=False)
        request.done.wait()
        if request.error is not None:
            raise request.error
        self.warmed = True

    def check(self, stuck_after_s: float, max_failures: int) -> str | None:
        """Why this tower cannot serve now, or None. After `max_failures` failed executions
        in a row it queues one probe execution (the warm-up input), whose success clears them."""
        if not self.warmed:
            return "not warmed up yet"
        since = self.executing_since
        if since is not None and (running := time.monotonic() - since) > stuck_after_s:
            return f"an execution has been running for {running:.0f} s (limit {stuck_after_s:g} s)"
        if self.failures >= max_failures:
            idle = self._probing is None or self._probing.done.is_set()
            if self._probe is not None and idle:
                with suppress(Overloaded):  # a full queue will clear the failures anyway
                    self._probing = self._submit(*self._probe, counted=False)
            return f"its last {self.failures} executions failed: {self.last_error}"
        return None

    def _submit(
        self, items: Sequence[Any], lengths: Sequence[int] | None, counted: bool = True
    ) -> _Request:
        request = _Request(items, lengths, np.empty((len(items), self.spec.dim), np.float32))
        request.remaining = len(items)
        request.counted = counted
        request.is_gone = client_gone.get() if counted else None
        with self._wake:
            if self._closed:
                raise ModelUnavailable("the model was unloaded")
            if self._queued + len(items) > self.batching.max_queue:
                raise Overloaded(
                    f"{self._queued} items are queued for this model (limit "
                    f"{self.batching.max_queue}); retry shortly"
                )
            self._pending.append(request)
            self._queued += len(items)
            self._wake.notify()
        return request

    def close(self) -> None:
        """Stop the executor once the queue is empty, then release the engine."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _release(self) -> None:
        self.backend.close()
        self.stats.engine(None)

    # --- executor thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            for execution in self._executions(batch):
                self._execute(execution)
        self._release()

    def _take(self) -> list[tuple[_Request, int]] | None:
        """The next items to run: at once when idle with one request queued, else as many as
        arrive within the batching delay, up to the max batch and token budget."""
        with self._wake:
            batch: list[tuple[_Request, int]] = []
            while not batch:  # empty when every queued request had passed its deadline
                while not self._pending:
                    if self._closed:
                        return None
                    self._wake.wait()
                batch = self._collect()
            if not self._busy and not self._pending and self._started_alone(batch):
                return self._claimed(batch)
            deadline = time.monotonic() + self.batching.max_delay_s
            while self._room(batch) and (remaining := deadline - time.monotonic()) > 0:
                self._wake.wait(remaining)
                batch += self._collect(batch)
            return self._claimed(batch)

    @staticmethod
    def _started_alone(batch: list[tuple[_Request, int]]) -> bool:
        return len({id(request) for request, _ in batch}) == 1

    def _room(self, batch: list[tuple[_Request, int]]) -> bool:
        return len(batch) < self.spec.max_batch

    def _collect(
        self, batch: list[tuple[_Request, int]] | None = None
    ) -> list[tuple[_Request, int]]:
        """Take queued items in arrival order while they fit the batch (lock held)."""
        taken: list[tuple[_Request, int]] = []
        lengths = [r.lengths[i] for r, i in batch or [] if r.lengths is not None]
        count = len(batch or [])
        while self._pending and count < self.spec.max_batch:
            request = self._pending[0]
            if request.taken == 0 and request.counted and self._expired(request):
                continue
            if request.lengths is not None:
                length = request.lengths[request.taken]
                widest = max([length, *lengths])
                if lengths and (len(lengths) + 1) * widest > self.batching.max_tokens:
                    break
                lengths.append(length)
            taken.append((request, request.taken))
            request.taken += 1
            count += 1
            if request.taken == len(request.items):
                self._pending.popleft()
        self._queued -= len(taken)
        return taken

    def _expired(self, request: _Request) -> bool:
        """Drop the request at the head of the queue if it waited past the deadline (lock held):
        its client has most likely given up, and running it would delay the live ones."""
        limit = self.batching.max_queue_wait_s
        waited_s = (time.perf_counter_ns() - request.timer.arrival) / 1e9
        if limit is None or waited_s <= limit:
            return False
        self._pending.popleft()
        self._queued -= len(request.items)
        QUEUE_DEADLINE_DROPS.labels(*self.stats.labels).inc()
        request.error = QueueDeadline(
            f"the request waited {waited_s * 1000:.0f} ms in the queue for this model (limit "
            f"{limit * 1000:g} ms) and was dropped before execution; retry shortly"
        )
        request.done.set()
        return True

    def _claimed(self, batch: list[tuple[_Request, int]]) -> list[tuple[_Request, int]]:
        self._busy = True
        return batch

    def _executions(self, batch: list[tuple[_Request, int]]) -> list[list[tuple[_Request, int]]]:
        """Text: sorted by length, then cut into the executions with the least estimated cost
        (padded tokens, plus a fixed overhead per execution). Images: one execution."""
        if batch[0][0].lengths is None:
            return [batch]
        ordered = sorted(batch, key=lambda item: item[0].lengths[item[1]])
        lengths = [request.lengths[index] for request, index in ordered]
        overhead = self.batching.execution_overhead_tokens
        # best[j]: least cost of the first j items; cut[j]: where its last execution starts.
        best, cut = [0.0], [0]
        for end in range(1, len(lengths) + 1):
            costs = [
                best[start] + overhead + (end - start) * lengths[end - 1] for start in range(end)
            ]
            cut.append(min(range(end), key=costs.__getitem__))
            best.append(costs[cut[-1]])
        executions, end = [], len(ordered)
        while end > 0:
            executions.append(ordered[cut[end] : end])
            end = cut[end]
        return executions[::-1]

    def _execute(self, execution: list[tuple[_Request, int]]) -> None:
        if not (execution := self._wanted(execution)):
            return
        self.executing_since = time.monotonic()
        try:
            self._run_execution(execution)
        finally:
            self.executing_since = None

    def _wanted(self, execution: list[tuple[_Request, int]]) -> list[tuple[_Request, int]]:
        """The items whose answer someone still waits for. A request whose client has gone is
        dropped here, just before execution (and counted); the items of a request that has
        already failed or been dropped are finished without running."""
        for request in {id(request): request for request, _ in execution}.values():
            if request.error is None and request.is_gone is not None and request.is_gone():
                CLIENT_GONE_DROPS.labels(*self.stats.labels).inc()
                request.error = ClientGone(
                    "the client closed the connection before the request executed"
                )
        unwanted = [item for item in execution if item[0].error is not None]
        if unwanted:
            self._finish(unwanted)
        return [item for item in execution if item[0].error is None]

    def _run_execution(self, execution: list[tuple[_Request, int]]) -> None:
        began = time.perf_counter_ns()
        requests = {id(request): request for request, _ in execution}.values()
        for request in requests:
            if not request.started:
                request.started = True
                request.timer.add("queue", began - request.timer.arrival)
        try:
            inputs = self.collate([request.items[index] for request, index in execution])
            prepared = time.perf_counter_ns()
            result = self.backend.run(inputs)
            executed = time.perf_counter_ns()
            for row, (request, index) in enumerate(execution):
                request.outputs[index] = result.output[row]
            finished = time.perf_counter_ns()
        except BaseException as error:  # the request fails; the executor keeps serving
            self.failures += 1
            self.last_error = error
            for request in requests:
                request.error = error
            self._finish(execution)
            return
        self.failures = 0
        # Host-side padding and slicing count with the backend's own input and output phases.
        durations = (
            prepared - began + result.input_ns,
            result.infer_ns,
            finished - executed + result.output_ns,
        )
        if any(request.counted for request in requests):  # not warm-ups and probes alone
            self.stats.execution(len(execution), *durations)
        for request in requests:
            for stat, ns in zip(BATCH_STATS, durations, strict=True):
                request.timer.add(stat, ns)
        self._finish(execution)

    def _finish(self, execution: list[tuple[_Request, int]]) -> None:
        for request, _ in execution:
            request.remaining -= 1
            if request.remaining == 0:
                request.done.set()
        with self._wake:
            self._busy = bool(self._pending)
