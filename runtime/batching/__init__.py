"""Dynamic batching settings, apart from the batcher so that configuring a server does not
import its metrics (prometheus-client must first be imported after its multiprocess directory
is set, in serve)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchingConfig:
    # How long the executor may hold a partial batch open for more requests (never when it was
    # idle and only one request is queued).
    max_delay_s: float = 0.002
    # Most padded tokens (batch x longest text) in one execution; text towers only. OpenVINO
    # keeps the memory of the largest execution it ran (it grows with batch x length^2), so
    # this also bounds a worker's memory after long texts: 32 x 128 fits, 32 x 256 is cut in 2.
    max_tokens: int = 4096
    # Most items waiting per tower; beyond it requests are refused at once (503).
    max_queue: int = 1024
    # Text: a sorted batch is cut into executions where that saves padding worth more than this
    # many tokens per extra execution (the fixed cost of one execution, measured on CPU).
    execution_overhead_tokens: int = 128
    # Text: when more is queued than one execution takes, the executor takes up to this many
    # executions' worth at once and sorts it by length (less padding; the requests in it
    # finish together, about this many executions later).
    sort_window_batches: int = 4
    # A request none of whose items has begun executing this many seconds after it arrived is
    # withdrawn from the queue and answered at once (503), by its own timer; None waits forever.
    max_queue_wait_s: float | None = 30.0
