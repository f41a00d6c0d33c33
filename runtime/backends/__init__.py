"""Execution backends: one small interface, one module per engine kind."""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.backends.base import Backend, BackendUnavailable
from runtime.manifest import TowerSpec

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")


def open_backend(directory: Path, tower: TowerSpec, choice: str, threads: int) -> Backend:
    """Open one tower with the chosen backend.

    `auto` picks TensorRT where a plan and a TensorRT runtime are present; this release
    builds and runs ONNX graphs only, so `auto` means ONNX Runtime and `tensorrt` is refused.
    """
    if choice not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    if choice == "tensorrt":
        raise BackendUnavailable(
            f"the TensorRT backend cannot run {directory.name}/{tower.onnx}: "
            + (
                "the model has no TensorRT plan"
                if tower.plan is None
                else "this release of ingrain-server does not run TensorRT plans"
            )
            + "; serve it with --backend onnxruntime"
        )
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(directory / tower.onnx, threads=threads)
    log.info("%s/%s: using %s", directory.name, tower.onnx, backend.describe())
    return backend
