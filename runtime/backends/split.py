"""One tower on two engines: each execution runs on the one that is faster at its size (`auto`
measured both on this host; runtime.backends.choice)."""

from __future__ import annotations

import numpy as np

from runtime.backends.base import Backend, Execution


def execution_tokens(inputs: dict[str, np.ndarray]) -> int:
    """Rows x row length of a batch of token inputs; rows of an image batch."""
    first = next(iter(inputs.values()))
    return int(first.shape[0] * first.shape[1]) if first.ndim == 2 else int(first.shape[0])


class SplitBackend:
    """Executions of up to `above` tokens run on `small`, larger ones on `large`."""

    decision = None

    def __init__(self, small: Backend, large: Backend, above: int) -> None:
        self.small, self.large, self.above = small, large, above
        self.name = "+".join(dict.fromkeys((small.name, large.name)))
        self.precision = "+".join(dict.fromkeys((small.precision, large.precision)))
        self.bucket_widths = small.bucket_widths or large.bucket_widths
        # Executions run on either engine, so more texts than the max batch only where both
        # gain from them.
        bounds = (small.packed_tokens, large.packed_tokens)
        self.packed_tokens = None if None in bounds else min(bounds)

    def engine_for(self, inputs: dict[str, np.ndarray]) -> Backend:
        return self.small if execution_tokens(inputs) <= self.above else self.large

    def run(self, inputs: dict[str, np.ndarray]) -> Execution:
        return self.engine_for(inputs).run(inputs)

    def describe(self) -> str:
        return (
            f"{self.small.describe()} for executions of up to {self.above} tokens, "
            f"{self.large.describe()} above"
        )

    def close(self) -> None:
        self.small.close()
        self.large.close()
