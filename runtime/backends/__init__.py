"""Execution backends: one small interface, one module per engine kind."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from runtime.backends.base import Backend, BackendUnavailable, Execution
from runtime.config import RuntimeConfig
from runtime.manifest import TowerSpec
from runtime.precision import choose

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openvino", "onnxruntime", "tensorrt")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "Execution",
    "open_backend",
    "openvino_unavailable",
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


def openvino_unavailable() -> str | None:
    """Why OpenVINO cannot run here (None when it can)."""
    if importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed (pip install openvino)"
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"openvino does not import: {error}"
    return None


def open_backend(directory: Path, tower: TowerSpec, runtime: RuntimeConfig, model: str) -> Backend:
    """Open one tower of `model`. `auto` picks TensorRT where a plan, TensorRT and a matching GPU
    are present, else OpenVINO where it imports, else ONNX Runtime, logging each fallback and
    why; a named backend insists."""
    choice, requested = runtime.backend, runtime.precision_for(model)
    if choice not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    where = f"{directory.name}/{tower.onnx}"
    if choice in ("auto", "tensorrt"):
        reason = _plan_unavailable(tower)
        if reason is None:
            from runtime.backends.tensorrt import TensorRTBackend

            backend = TensorRTBackend(
                directory / tower.plan,
                tower.plan_info["profiles"],
                version_compatible=bool(tower.plan_info.get("version_compatible")),
                precision=tower.plan_info.get("precision", "fp32"),
            )
            log.info("%s/%s: using %s", directory.name, tower.plan, backend.describe())
            return backend
        if choice == "tensorrt":
            raise BackendUnavailable(f"the TensorRT backend cannot run {directory.name}: {reason}")
        if tower.plan is not None:
            log.warning("%s/%s: %s; falling back to the CPU", directory.name, tower.plan, reason)
    if choice in ("auto", "openvino"):
        reason = openvino_unavailable()
        if reason is None:
            backend = _open_openvino(directory, tower, runtime, requested)
            log.info("%s: using %s", where, backend.describe())
            return backend
        if choice == "openvino":
            raise BackendUnavailable(f"the OpenVINO backend cannot run here: {reason}")
        log.warning("%s: %s; falling back to ONNX Runtime", where, reason)
    if requested == "bf16":
        raise BackendUnavailable(
            "bf16 runs on the OpenVINO backend only; use --backend auto or openvino, or f32"
        )
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(directory / tower.onnx, threads=runtime.threads)
    log.info("%s: using %s", where, backend.describe())
    return backend


def _open_openvino(
    directory: Path, tower: TowerSpec, runtime: RuntimeConfig, requested: str
) -> Backend:
    from runtime.backends import openvino

    precision, why = choose(requested, openvino.bf16_supported(), tower.precisions)
    if why is not None:
        log.warning("%s/%s: %s", directory.name, tower.onnx, why)
    return openvino.OpenVinoBackend(
        directory / tower.onnx, precision, runtime.threads, runtime.cache_root(directory)
    )
