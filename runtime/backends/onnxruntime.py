"""ONNX Runtime: the default backend, on the CPU (or CUDA where its provider is installed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.backends.base import Execution


class OnnxRuntimeBackend:
    name = "onnxruntime"
    bucket_widths = False
    # Packed executions of more texts than the max batch ran slower per token here, not faster:
    # 8 clients x 32 texts on MiniLM, 0.89x the 32-text executions (their activations outgrow
    # the CPU's cache).
    packed_tokens = None
    # Set by `auto` on the backend it chose (runtime.backends.choice).
    decision = None

    def __init__(self, path: Path, threads: int = 0, precision: str = "f32") -> None:
        # f32, or int8 for a verified int8 variant (dynamically quantised MatMuls).
        self.precision = precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The arena keeps the largest batch's activations for ever (about 800 MB per worker after
        # one burst of 256-token texts); without it they go back to malloc, which the worker
        # trims after large requests (api.server.server). No throughput cost measured on CPU.
        options.enable_cpu_mem_arena = False
        # Its inference threads sleep when out of work instead of spinning: spinning, they took
        # the cores the worker's request threads needed (at 32 clients x 1 sentence on 2 cores,
        # 40% of the worker's CPU went to one spinning thread; without it throughput rose 1.15x
        # at 32 x 1 and 1.9-2.4x at 8 x 32: bench overhead).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in preferred if p in ort.get_available_providers()]
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self._output = self._session.get_outputs()[0].name

    def run(self, inputs: dict[str, np.ndarray]) -> Execution:
        started = time.perf_counter_ns()
        output = self._session.run([self._output], inputs)[0]
        return Execution(output, 0, time.perf_counter_ns() - started, 0)

    def close(self) -> None:
        self._session = None

    def describe(self) -> str:
        return f"onnxruntime {ort.__version__} ({self._session.get_providers()[0]})"
