"""The interface every backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this tower here; the message says why and what to do."""


class Backend(Protocol):
    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch of named inputs; return the tower's single output for that batch."""
        ...

    def describe(self) -> str:
        """A short human description: engine kind and device."""
        ...
