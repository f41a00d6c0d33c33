"""Execution backends: one small interface, one module per engine kind."""

from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from runtime.backends.base import Backend, BackendUnavailable, Execution
from runtime.backends.choice import (
    Candidate,
    Decision,
    cpu_class,
    decide,
    probe_key,
    read_cached,
    state_file,
)
from runtime.batching.packing import SEGMENT_IDS
from runtime.config import RuntimeConfig
from runtime.precision import choose
from runtime.repository.manifest import TowerSpec

log = logging.getLogger(__name__)

# OpenVINO's CPU plugin keeps the kernels it built for every input shape it has run, in oneDNN's
# primitive cache (1024 by default) and in its own runtime cache (5000; openvino.py bounds it to
# a few): with texts of every length a worker grew by about 1.5 MB per new (batch, length)
# shape. The runtime cache alone, bounded, gives the speed of kernels shared within an
# execution, so oneDNN's is off. Read once, when OpenVINO first builds a kernel, so set before
# any backend loads; a user's setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")

BACKENDS = ("auto", "openvino", "onnxruntime", "tensorrt")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "Candidate",
    "Decision",
    "Execution",
    "Selection",
    "engine_summary",
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
    """The engine and precision a tower will run on, and why any fallback happened. Under
    `auto` on the CPU, `candidates` lists what the load measures (runtime.backends.choice);
    `backend` and `precision` are then the choice cached for this host, or what runs where the
    probe cannot (the first candidate)."""

    backend: str
    precision: str
    notes: tuple[str, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    decision: Decision | None = None


def int8_missing(model: str) -> str:
    return (
        f"model {model!r} has no verified int8 variant; build one with: "
        f"ingrain-build --int8 --force SOURCE --name {model} (or serve it in f32)"
    )


def select(
    tower: TowerSpec, runtime: RuntimeConfig, model: str, directory: Path | None = None
) -> Selection:
    """`auto` picks TensorRT where a plan, TensorRT and a matching GPU are present, else the
    fastest CPU backend and lossless precision measured here (cached per host: with
    `directory` given, the cached choice is read); a named backend insists (BackendUnavailable
    if it cannot run). Opens nothing, so `ingrain list` can say the same."""
    choice, requested = runtime.backend, runtime.precision_for(model)
    if choice not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    notes: list[str] = []
    if choice in ("auto", "tensorrt") and requested != "int8":
        reason = _plan_unavailable(tower)
        if reason is None:
            precision = tower.plan_info.precision.replace("fp", "f")
            return Selection("tensorrt", precision)
        if choice == "tensorrt":
            raise BackendUnavailable(f"the TensorRT backend cannot run this model: {reason}")
        if tower.plan is not None:
            notes.append(f"{tower.plan}: {reason}; falling back to the CPU")
    if requested == "int8":
        if tower.int8 is None:
            raise BackendUnavailable(int8_missing(model))
        if choice not in ("auto", "onnxruntime"):
            raise BackendUnavailable("int8 runs on ONNX Runtime; use --backend auto or onnxruntime")
        return Selection("onnxruntime", "int8", (*notes, *_int8_caveat(tower.int8)))
    candidates: list[Candidate] = []
    if choice in ("auto", "onnxruntime") and requested != "bf16":
        candidates.append(Candidate("onnxruntime", "f32"))
    if choice in ("auto", "openvino"):
        reason = openvino_unavailable()
        if reason is None:
            from runtime.backends.openvino import bf16_supported

            precision, why = choose(requested, bf16_supported(), tower.precisions)
            notes.extend([why] if why else [])
            # f32 is always a candidate; a verified bf16 is one more.
            candidates.extend(Candidate("openvino", p) for p in dict.fromkeys(("f32", precision)))
            if requested == "bf16" or choice == "openvino":
                candidates = [Candidate("openvino", precision)]
        elif choice == "openvino":
            raise BackendUnavailable(f"the OpenVINO backend cannot run here: {reason}")
        else:
            notes.append(f"{reason}; measuring ONNX Runtime only")
    if not candidates:
        raise BackendUnavailable(
            "bf16 runs on the OpenVINO backend only; use --backend auto or openvino, or f32"
        )
    if choice == "auto" and requested == "auto" and tower.int8 is not None:
        candidates.append(Candidate("onnxruntime", "int8"))  # measured for show, never chosen
    first = candidates[0]
    if choice != "auto" or len(candidates) == 1:
        return Selection(first.backend, first.precision, tuple(notes))
    decision = None
    root = runtime.state_root(directory) if directory is not None else None
    if root is not None:
        files = _model_files(directory, tower, candidates)
        with suppress(OSError):  # files not here (a listing of a remote repository)
            key = probe_key(tower, files, candidates, runtime.threads)
            decision = read_cached(state_file(root, tower, key), key)
    picked = decision.choice if decision is not None else first
    return Selection(picked.backend, picked.precision, tuple(notes), tuple(candidates), decision)


def served_graph(tower: TowerSpec, runtime: RuntimeConfig, model: str) -> TowerSpec:
    """The graph a tower serves: its packed one where it has one and packing is on, on a CPU
    backend (in int8 where the packed graph has a verified int8 variant) or on TensorRT where
    a plan was built from the packed graph; else the padded one. Raises BackendUnavailable as
    `select` does."""
    if tower.packed is None or not runtime.packing:
        return tower
    packed = tower.packed
    if runtime.precision_for(model) == "int8" and packed.int8 is None:
        return tower  # the padded graph's int8 variant, where there is one
    graph = replace(
        tower, onnx=packed.onnx, inputs=packed.inputs, output=packed.output, int8=packed.int8
    )
    if select(tower, runtime, model).backend != "tensorrt":
        return graph
    if packed.plan is None:  # a plan from before packed plans: the padded graph's
        return tower
    return replace(graph, plan=packed.plan, plan_info=packed.plan_info)


def int8_variant(tower: TowerSpec, runtime: RuntimeConfig) -> dict | None:
    """The verified int8 variant that int8 serves here, with its figures: the packed graph's
    where packing serves it, else the padded graph's (None: no variant)."""
    if runtime.packing and tower.packed is not None and tower.packed.int8 is not None:
        return tower.packed.int8
    return tower.int8


def engine_summary(
    tower: TowerSpec, runtime: RuntimeConfig, model: str, directory: Path | None
) -> dict:
    """What the tower runs on here, for `ingrain list` and /model_info: backend, precision,
    and under `auto` on the CPU whether that was measured on this host (`chosenBy`: measured,
    or `not measured yet` before the first load), the figures it was chosen by, and the
    engine that runs the larger executions where it keeps two (`split`)."""
    try:
        selection = select(served_graph(tower, runtime, model), runtime, model, directory)
    except BackendUnavailable as error:
        return {
            "backend": None,
            "precision": None,
            "chosenBy": None,
            "split": None,
            "error": str(error),
        }
    chosen_by = "flag or only candidate"
    if selection.candidates:
        chosen_by = "measured" if selection.decision is not None else "not measured yet"
    decision = selection.decision
    summary = {
        "backend": selection.backend,
        "precision": selection.precision,
        "chosenBy": chosen_by,
        "probe": decision.figures if decision is not None else None,
        "split": None,
    }
    if decision is not None and decision.split is not None:
        # Two engines, named as /metrics names them; executions of more than `above` tokens
        # run on `large` (backend/precision), the others on `small`.
        large = decision.split.large
        summary["backend"] = "+".join(dict.fromkeys((selection.backend, large.backend)))
        summary["precision"] = "+".join(dict.fromkeys((selection.precision, large.precision)))
        summary["split"] = {"small": decision.choice.label, **decision.split.to_json()}
    return summary


VNNI = {"avx512_vnni", "avx_vnni"}


def _int8_caveat(int8: dict) -> list[str]:
    """A note where the int8 variant was verified on a CPU with VNNI and runs on one without:
    there ONNX Runtime's u8s8 kernels (VPMADDUBSW) can saturate, so the figures may not hold."""
    verified_on = set(int8.get("verified_on") or ())
    if verified_on & VNNI and not set(cpu_class()) & VNNI:
        return [
            "its int8 variant was verified on a CPU with VNNI and this one has none, where ONNX "
            "Runtime's int8 kernels can saturate: rebuild it with ingrain-build --int8 on this "
            "CPU class to verify it here"
        ]
    return []


def _model_files(directory: Path, tower: TowerSpec, candidates) -> list[Path]:
    files = [directory / tower.onnx]
    if any(candidate.precision == "int8" for candidate in candidates):
        files.append(directory / tower.int8["onnx"])
    return files


def open_backend(directory: Path, tower: TowerSpec, runtime: RuntimeConfig, model: str) -> Backend:
    """Open one tower of `model` on the backend `select` picks, logging the choice and why.
    Under `auto` on the CPU, the candidates are measured here unless this host's choice is
    cached; the chosen backend carries the decision (`backend.decision`). Under `auto`, a plan
    that TensorRT cannot open (corrupt, or built for another version) falls back to the CPU
    backends like a plan that cannot run here."""
    selection = select(tower, runtime, model)
    where = f"{directory.name}/{tower.onnx}"
    for note in selection.notes:
        log.warning("%s: %s", where, note)
    if selection.candidates:
        decision, backend = decide(
            runtime.state_root(directory),
            tower,
            _model_files(directory, tower, selection.candidates),
            list(selection.candidates),
            runtime.threads,
            lambda candidate: _open(directory, tower, runtime, candidate),
        )
        backend.decision = decision
        log.info("%s: auto chose %s", where, decision.summary())
        log.info("%s: using %s", where, backend.describe())
        return backend
    try:
        backend = _open(
            directory, tower, runtime, Candidate(selection.backend, selection.precision)
        )
    except Exception as error:
        if selection.backend != "tensorrt" or runtime.backend != "auto":
            raise
        log.warning("%s: cannot open %s (%s); falling back to the CPU", where, tower.plan, error)
        return open_backend(directory, replace(tower, plan=None, plan_info=None), runtime, model)
    log.info("%s: using %s", where, backend.describe())
    return backend


def _open(directory: Path, tower: TowerSpec, runtime: RuntimeConfig, candidate: Candidate):
    if candidate.backend == "tensorrt":
        from runtime.backends.tensorrt.engine import TensorRTBackend

        return TensorRTBackend(
            directory / tower.plan, tower.plan_info, precision=candidate.precision
        )
    if candidate.backend == "openvino":
        from runtime.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(
            directory / tower.onnx,
            candidate.precision,
            runtime.threads,
            runtime.cache_root(directory),
            packed=any(spec.name == SEGMENT_IDS for spec in tower.inputs),
        )
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    if candidate.precision == "int8":
        return OnnxRuntimeBackend(directory / tower.int8["onnx"], runtime.threads, "int8")
    return OnnxRuntimeBackend(directory / tower.onnx, threads=runtime.threads)
