"""OpenVINO on the CPU: the fast CPU backend, in f32 or (where the CPU has it) bf16.

It reads the exported ONNX file itself, with the dynamic shapes it was exported with. Each tower
gets one compiled model and one infer request: the tower's executor thread is the only caller
and runs one batch at a time, so the request is never used from two threads at once.

Compiled models are cached on disk (OpenVINO's CACHE_DIR), keyed by OpenVINO version, CPU and
compile settings. OpenVINO writes its cache blob in place, so a worker never compiles into a
directory another worker may be reading: it compiles into a fresh temporary directory and
renames it into place, and only a complete, renamed directory is ever read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np
import openvino as ov

from runtime.backends.base import Execution

log = logging.getLogger(__name__)

# What the compiled model reports for the precision it actually runs at.
REPORTED = {ov.Type.f32: "f32", ov.Type.bf16: "bf16", ov.Type.f16: "f16"}
# Entries of the CPU plugin's per-shape kernel cache (LRU; OpenVINO's default is 5000). One
# execution's layers take about 16; 64 keep a few recent shapes too: lone texts of random
# length ran in 4.5-5.6 ms instead of 8.1-9.6 (MiniLM, bf16), for about 25 MB per worker more.
RUNTIME_CACHE_SHAPES = 64
# Packed executions of short texts take more than the model's max batch, up to this many real
# tokens: on MiniLM at 8 clients x 32 texts, 1.17x executions capped at its 32 texts (bf16,
# AVX-512 BF16 without AMX; f32 in-process: 1.11x).
PACKED_TOKENS = 2048


@cache
def core() -> ov.Core:
    return ov.Core()


def capabilities() -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, INT8)."""
    return list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_supported() -> bool:
    return "BF16" in capabilities()


@cache
def cpu_key() -> str:
    """OpenVINO version and a short hash of the CPU's name and instruction-set flags: a cached
    model compiled for one CPU is never loaded on another."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            flags = next((line for line in stream if line.startswith("flags")), "")
    except OSError:
        pass
    name = core().get_property("CPU", "FULL_DEVICE_NAME")
    digest = hashlib.sha256(f"{name}\n{flags}\n{capabilities()}".encode()).hexdigest()[:12]
    return f"{ov.get_version().split('-')[0]}-{digest}"


class OpenVinoBackend:
    name = "openvino"
    # Set by `auto` on the backend it chose (runtime.backends.choice).
    decision = None

    def __init__(
        self,
        path: Path,
        precision: str = "f32",
        threads: int = 0,
        cache_root: Path | None = None,
        packed: bool = False,
    ) -> None:
        """`packed`: the graph masks attention by segment ids (runtime.batching.packing)."""
        properties: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
            # A few kernels kept per input shape, not thousands (memory grew with every new
            # shape; see runtime/backends/__init__.py). Not none: the layers of one execution
            # share their shapes, and rebuilding each layer's kernels made bf16 2.2x slower.
            "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_SHAPES,
        }
        if threads > 0:
            properties["INFERENCE_NUM_THREADS"] = threads
        if packed:
            # OpenVINO fuses a packed graph's attention (its mask is a full [rows, length,
            # length] tensor) into one "snippets" kernel that runs rows of up to ~64 tokens
            # 10-20% slower than the unfused ops the padded graph gets; unfused, packed runs as
            # fast as padded on the same shape, and 7% slower only on 256-token rows.
            properties["SNIPPETS_MODE"] = "DISABLE"
        started = time.perf_counter()
        self._compiled, cached = _compile(path, properties, cache_root)
        self.compile_s = time.perf_counter() - started
        self.cache = cached
        # Detect, never assume: the precision OpenVINO really chose (a CPU without BF16 runs f32).
        self.precision = REPORTED.get(
            self._compiled.get_property("INFERENCE_PRECISION_HINT"), "f32"
        )
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        # A new shape's kernels took ~10 ms to build in f32 and bf16 alike, about as long as a
        # bf16 execution runs on AMX: there, fewer widths won 1.2x on texts in random order; in
        # f32 they gained nothing and lost 9% on length-sorted batches (tokens 7% -> 15% idle).
        # bf16 without AMX (AVX-512 BF16 only) runs longer per shape: +2% random, -3% sorted.
        self.bucket_widths = self.precision == "bf16"
        self.packed_tokens = PACKED_TOKENS
        self._request = self._compiled.create_infer_request()
        self._inputs = {port.any_name: index for index, port in enumerate(self._compiled.inputs)}
        log.info(
            "%s: compiled with OpenVINO in %.2f s (cache: %s)", path, self.compile_s, self.cache
        )

    def run(self, inputs: dict[str, np.ndarray]) -> Execution:
        started = time.perf_counter_ns()
        for name, array in inputs.items():
            # Shared, not copied, where the batch is C-contiguous (stacked images may not be).
            tensor = ov.Tensor(np.ascontiguousarray(array), shared_memory=True)
            self._request.set_input_tensor(self._inputs[name], tensor)
        prepared = time.perf_counter_ns()
        self._request.infer()
        inferred = time.perf_counter_ns()
        # The request reuses its output buffer on the next run: copy it out.
        output = self._request.get_output_tensor(0).data.copy()
        return Execution(
            output, prepared - started, inferred - prepared, time.perf_counter_ns() - inferred
        )

    def close(self) -> None:
        self._request = None
        self._compiled = None

    def describe(self) -> str:
        version = ov.get_version().split("-")[0]
        return f"openvino {version} (CPU, {self.precision}, {self.threads} threads)"


def _compile(
    path: Path, properties: dict[str, object], cache_root: Path | None
) -> tuple[ov.CompiledModel, str]:
    """The compiled model and what the cache did: `off`, `hit <dir>` or `written <dir>`."""
    if cache_root is None:
        return core().compile_model(str(path), "CPU", properties), "off"
    final = cache_root / cpu_key() / _entry_name(path, properties)
    if final.is_dir():
        before = sorted(os.listdir(final))
        compiled = core().compile_model(str(path), "CPU", {**properties, "CACHE_DIR": str(final)})
        # OpenVINO writes a blob only when it found none to load.
        return compiled, f"{'hit' if sorted(os.listdir(final)) == before else 'miss'} {final}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(dir=final.parent, prefix=".compiling-"))
    except OSError as error:
        log.warning(
            "%s: no compiled-model cache (%s); pass --compile-cache DIR for a writable one",
            path,
            error,
        )
        return core().compile_model(str(path), "CPU", properties), "off"
    try:
        compiled = core().compile_model(
            str(path), "CPU", {**properties, "CACHE_DIR": str(temporary)}
        )
        try:
            temporary.rename(final)  # atomic; fails if another worker published first
        except OSError:
            return compiled, f"written, but another worker published {final} first"
        return compiled, f"written {final}"
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _entry_name(path: Path, properties: dict[str, object]) -> str:
    """One cache directory per ONNX file (by path, size and modification time, so a moved or
    rebuilt file gets a new one) and compile settings: a published directory holds the blob
    OpenVINO will look for, and nothing writes into it again."""
    stat = os.stat(path)
    key = f"{path.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}\n{sorted(properties.items())}"
    return f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
