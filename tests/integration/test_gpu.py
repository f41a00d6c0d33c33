"""GPU tests: the cuda-python plumbing on any CUDA GPU, and TensorRT build and serve where
tensorrt imports. Skipped cleanly elsewhere; run them on a GPU host with `pytest -m gpu`."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from runtime.tasks.text_embedding import embed_texts

pytestmark = pytest.mark.gpu


def _cuda_devices() -> int:
    try:
        if importlib.util.find_spec("cuda.bindings") is None:
            return 0
    except ModuleNotFoundError:
        return 0
    from runtime.backends.tensorrt import cuda

    return cuda.device_count()


needs_cuda = pytest.mark.skipif(_cuda_devices() == 0, reason="no CUDA GPU and cuda-python")
needs_tensorrt = pytest.mark.skipif(
    _cuda_devices() == 0 or importlib.util.find_spec("tensorrt") is None,
    reason="no TensorRT with a CUDA GPU",
)


@needs_cuda
def test_round_trip_through_pinned_and_device_memory_on_a_stream():
    from runtime.backends.tensorrt import cuda

    name, capability = cuda.device()
    assert name and "." in capability
    stream = cuda.Stream()
    data = np.arange(1 << 20, dtype=np.float32)
    source = cuda.PinnedBuffer(data.nbytes, np.float32)
    target = cuda.PinnedBuffer(data.nbytes, np.float32)
    device = cuda.DeviceBuffer(data.nbytes)
    start, end = cuda.Event(), cuda.Event()
    try:
        np.copyto(source.view(data.shape), data)
        start.record(stream)
        cuda.to_device(device, source, data.nbytes, stream)
        cuda.to_host(target, device, data.nbytes, stream)
        end.record(stream)
        stream.synchronize()
        assert np.array_equal(target.view(data.shape), data)
        assert end.nanoseconds_since(start) > 0
    finally:
        for resource in (source, target, device, start, end, stream):
            resource.close()


@needs_tensorrt
def test_tensorrt_build_and_serve_match_onnx_runtime(tmp_path, minilm_source, clip_sources):
    from builder import BuildOptions, Progress, build_model
    from builder.options import TensorRTOptions
    from runtime.config import RuntimeConfig
    from runtime.models import Model
    from runtime.repository import Repository
    from tests.conftest import cosines

    engines = tmp_path / "engines"
    options = BuildOptions(16, tensorrt=TensorRTOptions(precision="fp16", batch=(1, 4, 16)))
    build_model(minilm_source, engines, "minilm-trt", options=options, progress=Progress())
    source = f"local-dir:{clip_sources['test/tiny-clip']}"
    build_model(source, engines, "clip-trt", options=options, progress=Progress())
    for name in ("minilm-trt", "clip-trt"):
        entry = Repository(engines).find(name)
        assert all(tower.plan for tower in entry.manifest.towers.values())
        trt_model = Model.load(entry, RuntimeConfig(backend="tensorrt"))
        ort_model = Model.load(entry, RuntimeConfig(backend="onnxruntime"))
        texts = [f"text number {i} " * (1 + i) for i in range(12)]
        served = embed_texts(trt_model, texts)
        assert cosines(served, embed_texts(ort_model, texts)).min() >= 0.999
        trt_model.close()
        ort_model.close()
    shutil.rmtree(engines)
