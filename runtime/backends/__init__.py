"""Execution backends: one small interface, one module per engine kind."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from runtime.backends.base import Backend, BackendUnavailable, Execution
from runtime.manifest import TowerSpec

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "Execution",
    "open_backend",
    "tensorrt_unavailable",
]


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot run on this host (None when it can). Imports nothing that touches
    the GPU unless the packages are there; call it in a worker, never in the master."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install 'ingrain-server[gpu]')"
    try:
        bindings = importlib.util.find_spec("cuda.bindings")
    except ModuleNotFoundError:
        bindings = None
    if bindings is None:
        return "cuda-python is not installed (pip install 'ingrain-server[gpu]')"
    from runtime import cuda

    if cuda.device_count() == 0:
        return "no CUDA GPU is visible"
    return None


def _plan_unavailable(tower: TowerSpec) -> str | None:
    if tower.plan is None or tower.plan_info is None:
        return "the model has no TensorRT plan (rebuild it with ingrain-build --tensorrt)"
    reason = tensorrt_unavailable()
    if reason is not None:
        return reason
    import tensorrt as trt

    from runtime import cuda
    from runtime.trt_plan import incompatibility

    return incompatibility(tower.plan_info, trt.__version__, *cuda.device())


def open_backend(directory: Path, tower: TowerSpec, choice: str, threads: int) -> Backend:
    """Open one tower. `auto` picks TensorRT where a plan, TensorRT and a matching GPU are
    present and falls back to ONNX Runtime with a warning saying why; `tensorrt` insists."""
    if choice not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    if choice != "onnxruntime":
        reason = _plan_unavailable(tower)
        if reason is None:
            from runtime.backends.tensorrt import TensorRTBackend

            backend = TensorRTBackend(
                directory / tower.plan,
                tower.plan_info["profiles"],
                version_compatible=bool(tower.plan_info.get("version_compatible")),
            )
            log.info("%s/%s: using %s", directory.name, tower.plan, backend.describe())
            return backend
        if choice == "tensorrt":
            raise BackendUnavailable(f"the TensorRT backend cannot run {directory.name}: {reason}")
        if tower.plan is not None:
            log.warning(
                "%s/%s: %s; falling back to ONNX Runtime", directory.name, tower.plan, reason
            )
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(directory / tower.onnx, threads=threads)
    log.info("%s/%s: using %s", directory.name, tower.onnx, backend.describe())
    return backend
