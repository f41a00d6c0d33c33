"""TensorRT: a plan deserialised once per worker (after fork), one execution context per
optimization profile, each on its own non-blocking CUDA stream with device and pinned host
buffers allocated once for the profile's max shapes. The tower's executor thread is the only
caller, so each context is used by one thread at a time.

Per batch: choose the profile, set input shapes, copy inputs to the device, execute_async_v3,
copy the output back, synchronise. CUDA events around the copies and the execution give
compute_input, compute_infer and compute_output.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import tensorrt as trt

from runtime.backends.base import BackendUnavailable, Execution
from runtime.backends.tensorrt import cuda
from runtime.backends.tensorrt.plan import buffer_bytes, output_max_shape, select_profile
from runtime.repository.manifest import PlanSpec

log = logging.getLogger(__name__)


class _OutputAllocator(trt.IOutputAllocator):
    """Hands TensorRT the slot's output buffer (sized for the most texts the profile holds) for
    an output whose shape depends on the inputs' values, and keeps the shape it reports."""

    def __init__(self, buffer: cuda.DeviceBuffer) -> None:
        trt.IOutputAllocator.__init__(self)
        self.buffer = buffer
        self.shape: tuple[int, ...] = ()

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
        return int(self.buffer.pointer) if size <= self.buffer.nbytes else 0  # 0: cannot

    def notify_shape(self, tensor_name: str, shape) -> None:
        self.shape = tuple(shape)


class _Slot:
    """One profile's execution context, stream, buffers and events."""

    def __init__(self, engine, index: int, inputs: list[str], output: str) -> None:
        self.context = engine.create_execution_context()
        self.stream = cuda.Stream()
        if index:
            if not self.context.set_optimization_profile_async(index, int(self.stream)):
                raise RuntimeError(f"TensorRT refused optimization profile {index}")
            self.stream.synchronize()
        self.device: dict[str, cuda.DeviceBuffer] = {}
        self.host: dict[str, cuda.PinnedBuffer] = {}
        for name in inputs:
            max_shape = tuple(engine.get_tensor_profile_shape(name, index)[2])
            self.context.set_input_shape(name, max_shape)
            self._allocate(name, max_shape, engine)
        shape = tuple(self.context.get_tensor_shape(output))
        self._allocate(output, output_max_shape(shape, max_shape), engine)
        # A packed graph's output (one row per text) has its size only after execution.
        self.allocator = _OutputAllocator(self.device[output]) if -1 in shape else None
        for name, buffer in self.device.items():
            if name == output and self.allocator is not None:
                self.context.set_output_allocator(name, self.allocator)
            else:
                self.context.set_tensor_address(name, int(buffer.pointer))
        self.events = [cuda.Event() for _ in range(4)]

    def output_shape(self, output: str) -> tuple[int, ...]:
        """The enqueued execution's output shape. A data-dependent one is reported to the
        allocator as the execution runs: wait for it first."""
        if self.allocator is None:
            return tuple(self.context.get_tensor_shape(output))
        self.stream.synchronize()
        return self.allocator.shape

    def _allocate(self, name: str, shape: tuple[int, ...], engine) -> None:
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        nbytes = buffer_bytes(shape, dtype)
        self.device[name] = cuda.DeviceBuffer(nbytes)
        self.host[name] = cuda.PinnedBuffer(nbytes, dtype)

    def close(self) -> None:
        for resource in [*self.device.values(), *self.host.values(), *self.events, self.stream]:
            resource.close()
        self.context = None


# TensorRT keeps one process-wide logger: every runtime and builder must share this one.
LOGGER = trt.Logger(trt.Logger.WARNING)


class TensorRTBackend:
    name = "tensorrt"
    bucket_widths = False
    packed_tokens = None  # its plan's optimization profile bounds the rows

    def __init__(
        self,
        plan: Path,
        spec: PlanSpec,
        precision: str = "f32",
    ) -> None:
        self.precision = precision
        self._runtime = trt.Runtime(LOGGER)
        # A version-compatible plan carries its own lean runtime, which must be allowed to run.
        self._runtime.engine_host_code_allowed = spec.version_compatible
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise BackendUnavailable(f"TensorRT cannot deserialise {plan} (see the log above)")
        if self._engine.num_optimization_profiles != len(spec.profiles):
            raise BackendUnavailable(
                f"{plan} has {self._engine.num_optimization_profiles} optimization profiles; "
                f"model.json records {len(spec.profiles)}"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [name for name in names if is_input[name]]
        [self.output] = [name for name in names if not is_input[name]]
        self.profiles = spec.profiles
        self._slots = [self._slot(index) for index in range(len(self.profiles))]
        self.gpu = cuda.device()[0]

    def _slot(self, index: int) -> _Slot:
        return _Slot(self._engine, index, self.inputs, self.output)

    def describe(self) -> str:
        return f"TensorRT {trt.__version__} on {self.gpu} ({len(self._slots)} profiles)"

    def run(self, inputs: dict[str, np.ndarray]) -> Execution:
        first = inputs[self.inputs[0]]
        sequence = first.shape[1] if first.ndim == 2 else None
        index = select_profile(self.profiles, first.shape[0], sequence)
        try:
            return self._run(self._slots[index], inputs)
        except ValueError:
            raise  # a refused shape: the context is untouched
        except Exception:
            # A failed execution may leave the context unusable: replace it, keep serving.
            log.exception("TensorRT execution failed; recreating the execution context")
            try:
                self._slots[index].close()
                self._slots[index] = self._slot(index)
            except Exception:
                log.exception("recreating the execution context failed too")
            raise

    def _run(self, slot: _Slot, inputs: dict[str, np.ndarray]) -> Execution:
        started = time.perf_counter_ns()
        before_copy, before_run, after_run, after_copy = slot.events
        for name in self.inputs:
            array = inputs[name]
            if not slot.context.set_input_shape(name, array.shape):
                raise ValueError(f"TensorRT refused shape {array.shape} for {name}")
            np.copyto(slot.host[name].view(array.shape), array, casting="same_kind")
        staged = time.perf_counter_ns()
        before_copy.record(slot.stream)
        for name in self.inputs:
            nbytes = inputs[name].size * slot.host[name].array.itemsize
            cuda.to_device(slot.device[name], slot.host[name], nbytes, slot.stream)
        before_run.record(slot.stream)
        if not slot.context.execute_async_v3(int(slot.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the log above)")
        after_run.record(slot.stream)
        shape = slot.output_shape(self.output)
        output = slot.host[self.output]
        cuda.to_host(
            output,
            slot.device[self.output],
            int(np.prod(shape)) * output.array.itemsize,
            slot.stream,
        )
        after_copy.record(slot.stream)
        slot.stream.synchronize()
        copied = time.perf_counter_ns()
        result = output.view(shape).copy()
        return Execution(
            result,
            input_ns=staged - started + before_run.nanoseconds_since(before_copy),
            infer_ns=after_run.nanoseconds_since(before_run),
            output_ns=after_copy.nanoseconds_since(after_run) + time.perf_counter_ns() - copied,
        )

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots = []
        self._engine = None
        self._runtime = None
