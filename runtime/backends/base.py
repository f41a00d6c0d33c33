"""The interface every backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this tower here; the message says why and what to do."""


@dataclass(frozen=True)
class Execution:
    """One batch's output and where its time went, in the metrics' terms: input (host to
    device), infer (the engine itself) and output (device to host)."""

    output: np.ndarray
    input_ns: int
    infer_ns: int
    output_ns: int


class Backend(Protocol):
    # The engine kind (openvino, onnxruntime, tensorrt) and the precision it really runs at.
    name: str
    precision: str
    # Whether packed executions should come in few widths (runtime.batching.packing
    # .to_bucket_width): the engine builds kernels per input shape, at a cost near running them.
    bucket_widths: bool
    # A packed execution takes more texts than the tower's max batch while it holds at most
    # this many real tokens (None: never more; runtime.models).
    packed_tokens: int | None

    def run(self, inputs: dict[str, np.ndarray]) -> Execution:
        """Run one batch of named inputs; return the tower's single output for that batch."""
        ...

    def describe(self) -> str:
        """A short human description: engine kind and device."""
        ...

    def close(self) -> None:
        """Release the engine's memory now rather than at garbage collection."""
        ...
