"""The little CUDA the TensorRT backend needs, through cuda-python (`cuda.bindings.runtime`).

cuda-python is NVIDIA's own binding, ships wheels per CUDA major, and is what TensorRT's samples
use since 10.14; pycuda would need the CUDA toolkit headers to build and creates a context at
import (fatal before fork). Every call returns (error, *values); `check` turns errors into
exceptions. Nothing here runs at import, so importing it never touches the GPU.
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np
from cuda.bindings import runtime as cudart


class CudaError(RuntimeError):
    pass


def check(result: tuple):
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        raise CudaError(name.decode() if isinstance(name, bytes) else str(name))
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """Visible GPUs; 0 (with the reason logged) when the driver or device cannot be used."""
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        logging.getLogger(__name__).info("no usable CUDA device: %s", name)
        return 0
    return count


def device(index: int = 0) -> tuple[str, str]:
    """The GPU's name and compute capability ("8.6")."""
    properties = check(cudart.cudaGetDeviceProperties(index))
    name = properties.name
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return name.rstrip("\x00").strip(), f"{properties.major}.{properties.minor}"


def runtime_version() -> str:
    version = check(cudart.cudaRuntimeGetVersion())
    return f"{version // 1000}.{version % 1000 // 10}"


class Stream:
    """A non-blocking stream: it never synchronises with the legacy default stream."""

    def __init__(self) -> None:
        self.handle = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))

    def __int__(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart.cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        check(cudart.cudaStreamDestroy(self.handle))


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.pointer = check(cudart.cudaMalloc(max(nbytes, 1)))

    def close(self) -> None:
        check(cudart.cudaFree(self.pointer))


class PinnedBuffer:
    """Page-locked host memory, seen from numpy, so copies to and from the GPU are async."""

    def __init__(self, nbytes: int, dtype: np.dtype) -> None:
        self.nbytes = nbytes
        self.pointer = check(cudart.cudaMallocHost(max(nbytes, 1)))
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(int(self.pointer))
        self.array = np.frombuffer(raw, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize)

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.array[: int(np.prod(shape))].reshape(shape)

    def close(self) -> None:
        self.array = None
        check(cudart.cudaFreeHost(self.pointer))


def to_device(device: DeviceBuffer, host: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    check(cudart.cudaMemcpyAsync(device.pointer, host.pointer, nbytes, kind, stream.handle))


def to_host(host: PinnedBuffer, device: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(cudart.cudaMemcpyAsync(host.pointer, device.pointer, nbytes, kind, stream.handle))


class Event:
    def __init__(self) -> None:
        self.handle = check(cudart.cudaEventCreate())

    def record(self, stream: Stream) -> None:
        check(cudart.cudaEventRecord(self.handle, stream.handle))

    def nanoseconds_since(self, start: Event) -> int:
        """GPU time between two recorded events (after the stream has been synchronised)."""
        return int(check(cudart.cudaEventElapsedTime(start.handle, self.handle)) * 1_000_000)

    def close(self) -> None:
        check(cudart.cudaEventDestroy(self.handle))
