"""Execution backends: one small interface, one module per engine kind."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from runtime.backends.base import Backend, BackendUnavailable, Execution
from runtime.config import RuntimeConfig
from runtime.precision import choose
from runtime.repository.manifest import TowerSpec

log = logging.getLogger(__name__)

# OpenVINO's CPU plugin keeps the kernels it built for every input shape it has run, in oneDNN's
# primitive cache (1024 by default) and in its own runtime cache (openvino.py): with texts of
# every length a worker grew by about 1.5 MB per new (batch, length) shape. Read once, when
# OpenVINO first builds a kernel, so set before any backend loads; a user's setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")

BACKENDS = ("auto", "openvino", "onnxruntime", "tensorrt")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "Execution",
    "Selection",
    "open_backend",
    "openvino_unavailable",
    "select",
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
    from runtime.backends.tensorrt import cuda

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

    from runtime.backends.tensorrt import cuda
    from runtime.backends.tensorrt.plan import incompatibility

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


@dataclass(frozen=True)
class Selection:
    """The engine and precision a tower will run on, and why any fallback happened."""

    backend: str
    precision: str
    notes: tuple[str, ...] = ()


def select(tower: TowerSpec, runtime: RuntimeConfig, model: str) -> Selection:
    """`auto` picks TensorRT where a plan, TensorRT and a matching GPU are present, else OpenVINO
    where it imports, else ONNX Runtime; a named backend insists (BackendUnavailable if it
    cannot run). Opens nothing, so `ingrain list` can say the same."""
    choice, requested = runtime.backend, runtime.precision_for(model)
    if choice not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    notes: list[str] = []
    if choice in ("auto", "tensorrt"):
        reason = _plan_unavailable(tower)
        if reason is None:
            precision = tower.plan_info.precision.replace("fp", "f")
            return Selection("tensorrt", precision)
        if choice == "tensorrt":
            raise BackendUnavailable(f"the TensorRT backend cannot run this model: {reason}")
        if tower.plan is not None:
            notes.append(f"{tower.plan}: {reason}; falling back to the CPU")
    if choice in ("auto", "openvino"):
        reason = openvino_unavailable()
        if reason is None:
            from runtime.backends.openvino import bf16_supported

            precision, why = choose(requested, bf16_supported(), tower.precisions)
            return Selection("openvino", precision, (*notes, *([why] if why else [])))
        if choice == "openvino":
            raise BackendUnavailable(f"the OpenVINO backend cannot run here: {reason}")
        notes.append(f"{reason}; falling back to ONNX Runtime")
    if requested == "bf16":
        raise BackendUnavailable(
            "bf16 runs on the OpenVINO backend only; use --backend auto or openvino, or f32"
        )
    return Selection("onnxruntime", "f32", tuple(notes))


def open_backend(directory: Path, tower: TowerSpec, runtime: RuntimeConfig, model: str) -> Backend:
    """Open one tower of `model` on the backend `select` picks, logging the choice and why.
    Under `auto`, a plan that TensorRT cannot open (corrupt, or built for another version)
    falls back to the CPU backends like a plan that cannot run here."""
    selection = select(tower, runtime, model)
    where = f"{directory.name}/{tower.onnx}"
    for note in selection.notes:
        log.warning("%s: %s", where, note)
    try:
        backend = _open(directory, tower, runtime, selection)
    except Exception as error:
        if selection.backend != "tensorrt" or runtime.backend != "auto":
            raise
        log.warning("%s: cannot open %s (%s); falling back to the CPU", where, tower.plan, error)
        return open_backend(directory, replace(tower, plan=None, plan_info=None), runtime, model)
    log.info("%s: using %s", where, backend.describe())
    return backend


def _open(directory: Path, tower: TowerSpec, runtime: RuntimeConfig, selection: Selection):
    if selection.backend == "tensorrt":
        from runtime.backends.tensorrt.engine import TensorRTBackend

        return TensorRTBackend(
            directory / tower.plan, tower.plan_info, precision=selection.precision
        )
    if selection.backend == "openvino":
        from runtime.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(
            directory / tower.onnx,
            selection.precision,
            runtime.threads,
            runtime.cache_root(directory),
        )
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(directory / tower.onnx, threads=runtime.threads)
