"""The dynamic batcher: one tower's queue, and the batches its executor takes from it.

Request threads `put` requests; the executor `take`s items from the queued requests in turn
(one item from each request, round-robin, so that a large request cannot hold a small one back
by more than about one execution), up to the profile's max batch and (for text) a padded-token
budget, cuts a text batch into `executions` by length, and hands each execution back through
`finish`. A request larger than the max batch is taken over several batches.

Each request has its own deadline (the config's max_queue_wait_s): the thread waiting for it
`withdraw`s it when the deadline passes before any of its items has begun executing, wherever
it is in the queue; the executor checks the deadline and whether the client is still there
again just before execution (`wanted`), so such requests never run.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.batching import BatchingConfig
from runtime.batching.client import IsGone
from runtime.batching.stats import RequestTimer, TowerStats
from runtime.errors import ClientGone, ModelUnavailable, Overloaded, QueueDeadline


class Done:
    """Set once a request has finished; its one waiting thread wakes. A lock held until then:
    setting it is one release and waking one acquire, where threading.Event's Condition takes
    a lock on each side, notifies, and makes the woken thread contend for that lock again (a
    measurable share of the server's CPU at many small requests). Setting it again is a no-op."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            with suppress(RuntimeError):  # another thread released it first
                self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it is set, waiting at most `timeout` seconds (None: until it is)."""
        if self._set:
            return True
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        with suppress(RuntimeError):  # a concurrent set() released it meanwhile
            self._lock.release()  # for any other waiter
        return True


@dataclass(eq=False)  # compared by identity: the queue holds each request once
class Request:
    """One caller's items, the rows they come back in, and how far they have got."""

    items: Sequence[Any]
    lengths: Sequence[int] | None  # token counts (text), which group items by length
    outputs: np.ndarray
    # Warm-up and readiness probes: run like any request, but outside the metrics and deadline.
    counted: bool = True
    # Whether its client has closed the connection (None: cannot tell).
    is_gone: IsGone | None = None
    timer: RequestTimer = field(default_factory=RequestTimer)
    untaken: deque[int] = field(init=False)  # indices the executor has not taken yet
    remaining: int = field(init=False)  # items not finished yet
    # Set (under the batcher's lock) when its first execution begins: from then on it runs to
    # the end, deadline or not.
    started: bool = False
    error: BaseException | None = None
    done: Done = field(default_factory=Done)

    def __post_init__(self) -> None:
        self.untaken = deque(range(len(self.items)))
        self.remaining = len(self.items)

    def waited_s(self) -> float:
        return (time.perf_counter_ns() - self.timer.arrival) / 1e9


# One item of a batch: its request and its index there.
Batch = list[tuple[Request, int]]


class Batcher:
    def __init__(self, max_batch: int, config: BatchingConfig, stats: TowerStats) -> None:
        self.max_batch = max_batch
        self.config = config
        self.stats = stats
        # Requests with untaken items, in turn: the head gives the next item, then goes last.
        self._pending: deque[Request] = deque()
        self._queued = 0
        self._busy = False
        self._closed = False
        self._arrivals = 0  # requests put so far
        self._arrivals_taken = 0  # ... as of the last take
        self._wake = threading.Condition()

    @property
    def queued(self) -> int:
        """Items waiting for execution."""
        return self._queued

    def check_room(self, count: int) -> None:
        """Raise Overloaded when the queue cannot take `count` more items now."""
        if self._queued + count > self.config.max_queue:
            raise Overloaded(
                f"{self._queued} items are queued for this model (limit "
                f"{self.config.max_queue}); retry shortly"
            )

    def put(self, request: Request) -> None:
        """Queue `request`; raise ModelUnavailable once closed, Overloaded when it does not fit."""
        with self._wake:
            if self._closed:
                raise ModelUnavailable("the model was unloaded")
            self.check_room(len(request.items))
            self._pending.append(request)
            self._queued += len(request.items)
            self._arrivals += 1
            self._wake.notify()

    def close(self) -> None:
        """Refuse new requests; `take` returns None once the queue is empty."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    def take(self) -> Batch | None:
        """The next items to run (None once closed and empty): at once when idle with one
        request queued, else as many as arrive within the batching delay, up to the max batch
        and token budget. Blocks until there is something to run."""
        with self._wake:
            batch: Batch = []
            while not batch:  # empty when every queued request had passed its deadline
                while not self._pending:
                    if self._closed:
                        return None
                    self._wake.wait()
                batch = self._collect()
            # Waits for more only when busy or already merging: a lone request runs at once.
            if self._busy or self._pending or len({id(r) for r, _ in batch}) > 1:
                deadline = time.monotonic() + self.config.max_delay_s
                while len(batch) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._wake.wait(left)
                    batch += self._collect(batch)
            if self._pending and batch[0][0].lengths is not None:
                # Text already queued beyond one execution: take a wider window, so that
                # sorting it by length packs executions with less padding.
                batch += self._collect(batch, self.max_batch * self.config.sort_window_batches)
            self._busy = True
            self._arrivals_taken = self._arrivals
            return batch

    def _collect(self, batch: Batch | None = None, limit: int | None = None) -> Batch:
        """Take queued items, one per request in turn, while they fit the batch: at most
        `limit` items (default: one execution's) and as many padded tokens per execution
        (lock held)."""
        limit = limit or self.max_batch
        max_tokens = self.config.max_tokens * -(-limit // self.max_batch)
        taken: Batch = []
        lengths = [r.lengths[i] for r, i in batch or [] if r.lengths is not None]
        widest = max(lengths, default=0)
        count = len(batch or [])
        while self._pending and count < limit:
            request = self._pending.popleft()
            if request.error is not None or self._drop_if_late(request):
                self._discard(request)
                continue
            index = request.untaken[0]
            if request.lengths is not None:
                length = request.lengths[index]
                if lengths and (len(lengths) + 1) * max(widest, length) > max_tokens:
                    self._pending.appendleft(request)
                    break
                lengths.append(length)
                widest = max(widest, length)
            request.untaken.popleft()
            taken.append((request, index))
            count += 1
            if request.untaken:
                self._pending.append(request)  # its next item waits for its turn
        self._queued -= len(taken)
        return taken

    def _drop_if_late(self, request: Request) -> bool:
        """Fail `request` with QueueDeadline if it has not begun executing and waited past the
        deadline (lock held): its client has most likely given up, and running it would delay
        the live ones."""
        limit = self.config.max_queue_wait_s
        if not request.counted or request.started or request.error is not None or limit is None:
            return False
        if (waited_s := request.waited_s()) <= limit:
            return False
        self.stats.queue_deadline_drop()
        request.error = QueueDeadline(
            f"the request waited {waited_s * 1000:.0f} ms in the queue for this model (limit "
            f"{limit * 1000:g} ms) and was dropped before execution; retry shortly"
        )
        request.done.set()  # its waiter answers now; items already taken are finished unrun
        return True

    def _discard(self, request: Request) -> None:
        """Take a failed request's queued items out of the queue as finished (lock held)."""
        with suppress(ValueError):
            self._pending.remove(request)
        self._queued -= len(request.untaken)
        request.remaining -= len(request.untaken)
        request.untaken.clear()
        if request.remaining == 0:
            request.done.set()

    def fail(self, request: Request, error: BaseException) -> None:
        """Fail `request` (its execution raised): its queued items are finished unrun."""
        with self._wake:
            request.error = error
            self._discard(request)

    def withdraw(self, request: Request) -> bool:
        """For the thread waiting on `request` once its deadline has passed: fail it with
        QueueDeadline and take it out of the queue, unless its execution has begun (then it
        runs to the end). Whether it was withdrawn."""
        with self._wake:
            if not self._drop_if_late(request):
                return False
            self._discard(request)
            return True

    def newcomers(self) -> bool:
        """Whether requests have arrived since the last `take`."""
        return self._arrivals != self._arrivals_taken

    def put_back(self, batch: Batch) -> None:
        """Return items taken but not run to the front of the queue (their requests keep their
        turn), so that requests that arrived since are served first-come within one
        execution instead of behind a whole sort window."""
        with self._wake:
            returned: dict[int, tuple[Request, list[int]]] = {}
            for request, index in batch:
                returned.setdefault(id(request), (request, []))[1].append(index)
            for request, indices in reversed(returned.values()):
                if request.error is not None:  # finished unrun, as `wanted` would
                    request.remaining -= len(indices)
                    if request.remaining == 0:
                        request.done.set()
                    continue
                if not request.untaken:
                    self._pending.appendleft(request)
                request.untaken = deque(sorted([*indices, *request.untaken]))
                self._queued += len(indices)
            self._wake.notify()

    def urgency(self, execution: Batch) -> int:
        """Key to order a batch's executions: those that finish small requests run first."""
        return min(request.remaining for request, _ in execution)

    def executions(self, batch: Batch) -> list[Batch]:
        """Text: sorted by length, then cut into the executions with the least estimated cost
        (padded tokens, plus a fixed overhead per execution), each within the max batch and the
        token budget. Images: one execution."""
        if batch[0][0].lengths is None:
            return [batch]
        ordered = sorted(batch, key=lambda item: item[0].lengths[item[1]])
        lengths = [request.lengths[index] for request, index in ordered]
        overhead = self.config.execution_overhead_tokens
        # best[j]: least cost of the first j items; cut[j]: where its last execution starts.
        best, cut = [0.0], [0]
        for end in range(1, len(lengths) + 1):
            widest = lengths[end - 1]
            most = self.most_items(widest)
            starts = range(max(0, end - most), end)
            start = min(starts, key=lambda s: best[s] + (end - s) * widest)
            cut.append(start)
            best.append(best[start] + overhead + (end - start) * widest)
        executions, end = [], len(ordered)
        while end > 0:
            executions.append(ordered[cut[end] : end])
            end = cut[end]
        return executions[::-1]

    def most_items(self, width: int | None = None) -> int:
        """The most items one execution takes: text rows of `width` tokens, or images (no
        width); at least one, never more than the queue holds."""
        most = min(self.max_batch, self.config.max_queue)
        return most if width is None else max(1, min(most, self.config.max_tokens // width))

    def wanted(self, execution: Batch) -> Batch:
        """The items whose answer someone still waits for, checked just before they execute.
        A request whose client has gone or whose deadline has passed is dropped here (and
        counted); the items of a request that has already failed or been dropped are finished
        without running. The others are marked started: their deadline no longer applies."""
        requests = {id(request): request for request, _ in execution}.values()
        for request in requests:
            if request.error is None and request.is_gone is not None and request.is_gone():
                self.stats.client_gone_drop()
                request.error = ClientGone(
                    "the client closed the connection before the request executed"
                )
        began = time.perf_counter_ns()
        with self._wake:
            for request in requests:
                if request.error is not None or self._drop_if_late(request):
                    self._discard(request)
                elif not request.started:
                    request.started = True
                    request.timer.add("queue", began - request.timer.arrival)
        if unwanted := [item for item in execution if item[0].error is not None]:
            self.finish(unwanted)
        return [item for item in execution if item[0].error is None]

    def finish(self, execution: Batch) -> None:
        """Count `execution`'s items as done, waking each request whose last item it held."""
        for request, _ in execution:
            request.remaining -= 1
            if request.remaining == 0:
                request.done.set()
        with self._wake:
            self._busy = bool(self._pending)
