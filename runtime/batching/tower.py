"""One exported network and its backend, fed by a dynamic batcher.

Request threads queue their items in the tower's batcher (runtime.batching.batcher); one
executor thread per tower takes its batches, runs them one at a time (the backend already uses
every core it was given), and hands each request its rows back in order. The tower also keeps
the health readiness reads: warm-up, a running execution's age, failures in a row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import numpy as np

from runtime.backends import Backend
from runtime.batching import BatchingConfig
from runtime.batching.batcher import Batch, Batcher, Request
from runtime.batching.client import client_gone
from runtime.batching.packing import to_bucket_width, token_figures
from runtime.batching.stats import BATCH_STATS, TowerStats
from runtime.errors import Overloaded
from runtime.repository.manifest import TowerSpec

log = logging.getLogger(__name__)

Collate = Callable[[list[Any]], dict[str, np.ndarray]]
# Cuts a batch into executions (packed text towers); default: the batcher's `executions`.
Split = Callable[[Batch], list[Batch]]


class Tower:
    def __init__(
        self,
        spec: TowerSpec,
        backend: Backend,
        stats: TowerStats,
        collate: Collate,
        batching: BatchingConfig | None = None,
        split: Split | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.stats = stats
        self.collate = collate
        self.batcher = Batcher(spec.max_batch, batching or BatchingConfig(), stats)
        self.split = split or self.batcher.executions
        self.input_names = [tensor.name for tensor in spec.inputs]
        stats.engine(backend.name, backend.precision)
        # Health, for readiness: set by the executor thread, read by anyone.
        self.warmed = False
        self.executing_since: float | None = None  # time.monotonic() of the running execution
        self.failures = 0  # consecutive failed executions
        self.last_error: BaseException | None = None
        self._probe: tuple[Sequence[Any], Sequence[int] | None] | None = None
        self._probing: Request | None = None
        self._executor = threading.Thread(target=self._run, name="tower-executor", daemon=True)
        self._executor.start()

    def infer(self, items: Sequence[Any], lengths: Sequence[int] | None = None) -> np.ndarray:
        """One output row per item, in order. `lengths` (token counts) groups text by length.

        Raises Overloaded when the queue cannot take the items, QueueDeadline when they waited
        longer than the batching config's max_queue_wait_s before execution, ClientGone when
        the caller's client (the API's `client_gone` check) had left before they executed.
        """
        request = self._submit(items, lengths)
        self._wait(request)
        self.stats.request(request.timer, succeeded=request.error is None)
        if request.error is not None:
            raise request.error
        return request.outputs

    def admit(self, count: int) -> None:
        """Raise Overloaded at once when the queue has no room for `count` items, so that a
        request refused anyway is not tokenised, fetched or decoded first (`infer` checks
        again: others may take the room meanwhile)."""
        self.batcher.check_room(count)

    def _wait(self, request: Request) -> None:
        """Wait for `request` to finish; at its deadline, withdraw it from the queue unless
        its execution has begun (then it runs to the end)."""
        limit = self.batcher.config.max_queue_wait_s
        if limit is not None:
            left = limit - request.waited_s()
            if not request.done.wait(max(0.0, left)) and self.batcher.withdraw(request):
                return
        request.done.wait()

    def warm_up(self, items: Sequence[Any], lengths: Sequence[int] | None = None) -> None:
        """Run `items` once through the executor and the engine (outside the metrics), so the
        first real request pays no first-execution cost; raise what the execution raised.
        The same input is the probe `check` re-runs after failures."""
        self._probe = (items, lengths)
        self._run_once(items, lengths)
        self.warmed = True

    def run_largest(self, item: Any, width: int | None = None) -> None:
        """The largest execution the batcher forms: `item` (a text row of `width` tokens, or an
        image) as many times as one execution takes, outside the metrics. Warm-ups run it
        first, so that the engine's memory pools reach their high-water mark before the model
        counts as ready. A shape the engine refuses (a TensorRT plan built for shorter texts
        than the tokenizer allows) is logged, not raised: the model serves what it can."""
        rows = self.batcher.most_items(width)
        try:
            self._run_once([item] * rows, None if width is None else [width] * rows)
        except ValueError as error:
            log.warning(
                "%s: the largest input this model takes does not run on its engine (%s); "
                "requests that large will fail",
                "/".join(self.stats.labels),
                error,
            )

    def _run_once(self, items: Sequence[Any], lengths: Sequence[int] | None) -> None:
        request = self._submit(items, lengths, counted=False)
        request.done.wait()
        if request.error is not None:
            raise request.error

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
    ) -> Request:
        outputs = np.empty((len(items), self.spec.dim), np.float32)
        is_gone = client_gone.get() if counted else None
        request = Request(items, lengths, outputs, counted, is_gone)
        self.batcher.put(request)
        return request

    def close(self) -> None:
        """Stop the executor once the queue is empty, then release the engine."""
        self.batcher.close()

    # --- executor thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self.batcher.take()) is not None:
            executions = sorted(self.split(batch), key=self.batcher.urgency)
            for done, execution in enumerate(executions, start=1):
                self._execute(execution)
                if done < len(executions) and self.batcher.newcomers():
                    # Requests arrived while this batch ran: its other executions go back to
                    # the queue, so the newcomers need not wait for all of them.
                    self.batcher.put_back([item for rest in executions[done:] for item in rest])
                    break
        self.backend.close()
        self.stats.engine(None)

    def _execute(self, execution: Batch) -> None:
        if not (execution := self.batcher.wanted(execution)):
            return
        self.executing_since = time.monotonic()
        try:
            self._run_execution(execution)
        finally:
            self.executing_since = None

    def _run_execution(self, execution: Batch) -> None:
        began = time.perf_counter_ns()
        requests = {id(request): request for request, _ in execution}.values()
        try:
            inputs = self.collate([request.items[index] for request, index in execution])
            if self.backend.bucket_widths:
                inputs = to_bucket_width(inputs)
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
                self.batcher.fail(request, error)
            self.batcher.finish(execution)
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
            self.stats.tokens(token_figures(inputs))
        for request in requests:
            for stat, ns in zip(BATCH_STATS, durations, strict=True):
                request.timer.add(stat, ns)
        self.batcher.finish(execution)
