"""The TensorRT path's logic that runs without a GPU: profiles, buffers, compatibility, the
strongly typed FP16 conversion (checked with ONNX Runtime), and a clear --tensorrt error."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from builder.errors import BuildError
from builder.mixed_precision import convert_to_fp16
from builder.options import BuildOptions, TensorRTOptions
from runtime.backends.tensorrt.plan import (
    buffer_bytes,
    incompatibility,
    plan_profiles,
    select_profile,
)
from runtime.config import RuntimeConfig
from runtime.models import Model, ModelLoadError
from runtime.repository import Repository, slugify
from runtime.repository.manifest import Manifest, ManifestError, PlanSpec, ProfileRange
from runtime.tasks.text_embedding import embed_texts
from tests.conftest import BIN, MINILM, copy_tree, cosines


def test_profiles_split_small_and_large_batches():
    small, large = plan_profiles((1, 8, 32), (1, 128, 512))
    assert small == ProfileRange((1, 1, 8), (1, 128, 512))
    assert large == ProfileRange((9, 32, 32), (1, 128, 512))
    assert plan_profiles((1, 1, 32), None) == [ProfileRange((1, 1, 32))]
    assert plan_profiles((1, 32, 32), None) == [ProfileRange((1, 32, 32))]
    with pytest.raises(ValueError):
        plan_profiles((4, 2, 8), None)


def test_profile_shapes_for_text_and_image_inputs():
    profile = ProfileRange((1, 4, 8), (2, 64, 256))
    assert profile.shapes(["batch", "sequence"]) == ((1, 2), (4, 64), (8, 256))
    assert profile.shapes(["batch", 3, 224, 224]) == (
        (1, 3, 224, 224),
        (4, 3, 224, 224),
        (8, 3, 224, 224),
    )


def test_select_profile_picks_the_smallest_that_fits():
    profiles = plan_profiles((1, 8, 32), (1, 128, 512))
    assert select_profile(profiles, 1, 20) == 0
    assert select_profile(profiles, 8, 512) == 0
    assert select_profile(profiles, 9, 3) == 1
    assert select_profile(profiles, 32, 512) == 1
    with pytest.raises(ValueError, match="no optimization profile takes batch 33"):
        select_profile(profiles, 33, 10)
    with pytest.raises(ValueError, match="sequence 513"):
        select_profile(profiles, 2, 513)


def test_buffers_are_sized_for_the_max_shape():
    assert buffer_bytes((32, 512), np.int64) == 32 * 512 * 8
    assert buffer_bytes((32, 3, 224, 224), np.uint8) == 32 * 3 * 224 * 224
    with pytest.raises(ValueError):
        buffer_bytes((-1, 512), np.int64)


PLAN = PlanSpec("10.9.0", "NVIDIA A10G", "8.6", tuple(plan_profiles((1, 8, 32), (1, 128, 256))))


def test_plan_compatibility_names_both_sides():
    assert incompatibility(PLAN, "10.9.0", "NVIDIA A10G", "8.6") is None
    reason = incompatibility(PLAN, "10.10.0", "NVIDIA A10G", "8.6")
    assert "TensorRT 10.9.0" in reason and "TensorRT 10.10.0" in reason
    reason = incompatibility(PLAN, "10.9.0", "NVIDIA H100", "9.0")
    assert "NVIDIA A10G (compute 8.6" in reason and "NVIDIA H100 (compute 9.0)" in reason
    portable = replace(PLAN, version_compatible=True, hardware_compat="ampere_plus")
    assert incompatibility(portable, "11.1.0", "NVIDIA H100", "9.0") is None
    assert "compute 7.5" in incompatibility(portable, "10.9.0", "Tesla T4", "7.5")
    same_cc = replace(PLAN, hardware_compat="same_cc")
    assert incompatibility(same_cc, "10.9.0", "NVIDIA A40", "8.6") is None
    assert incompatibility(same_cc, "10.9.0", "NVIDIA L4", "8.9") is not None
    assert incompatibility(portable, "10.8.0", "NVIDIA H100", "9.0") is not None
    assert incompatibility(portable, "12.0.0", "NVIDIA H100", "9.0") is not None


def planned_manifest(plan_info) -> dict:
    """A manifest as JSON data, its one image tower carrying `plan_info`."""
    tower = {
        "onnx": "image.onnx",
        "inputs": [{"name": "pixels", "dtype": "uint8", "shape": ["batch", 3, 224, 224]}],
        "output": {"name": "embedding", "dtype": "float32", "shape": ["batch", 512]},
        "dim": 512,
        "max_batch": 32,
        "plan": "image.plan",
        "plan_info": plan_info,
    }
    return {
        "schema_version": 1,
        "name": "timm/some-model",
        "library": "timm",
        "task": "embedding",
        "towers": {"image": tower},
    }


def test_the_plan_spec_round_trips_through_model_json():
    spec = replace(PLAN, cuda_version="12.8", precision="fp16", onnx_sha256="ab" * 32)
    manifest = Manifest.from_dict(planned_manifest(None))
    manifest = replace(
        manifest, towers={"image": replace(manifest.towers["image"], plan_info=spec)}
    )
    read = Manifest.from_dict(json.loads(manifest.to_json()))
    assert read.towers["image"].plan_info == spec
    assert read == manifest


def test_a_manifest_written_before_the_plan_spec_still_reads():
    """The earlier builder wrote plan_info as a plain dict; its keys and shape are unchanged."""
    written = {
        "tensorrt_version": "10.9.0",
        "gpu_name": "NVIDIA A10G",
        "compute_capability": "8.6",
        "cuda_version": "12.8",
        "precision": "fp16",
        "strongly_typed": False,
        "hardware_compat": "ampere_plus",
        "version_compatible": True,
        "opt_level": 3,
        "profiles": [
            {"batch": [1, 1, 8], "sequence": None},
            {"batch": [9, 32, 32], "sequence": None},
        ],
        "onnx_sha256": "ab" * 32,
    }
    spec = Manifest.from_dict(planned_manifest(written)).towers["image"].plan_info
    assert spec.profiles == (ProfileRange((1, 1, 8)), ProfileRange((9, 32, 32)))
    assert (spec.precision, spec.hardware_compat, spec.version_compatible) == (
        "fp16",
        "ampere_plus",
        True,
    )
    assert incompatibility(spec, "11.1.0", "NVIDIA H100", "9.0") is None
    assert (
        json.loads(Manifest.from_dict(planned_manifest(written)).to_json())["towers"]["image"][
            "plan_info"
        ]
        == written
    )
    without_profiles = {key: value for key, value in written.items() if key != "profiles"}
    with pytest.raises(ManifestError, match="profiles"):
        Manifest.from_dict(planned_manifest(without_profiles))


@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is None,
    reason="Model Optimizer comes with the gpu extra (pip install '.[gpu]')",
)
def test_fp16_conversion_keeps_io_types_and_accuracy(engines, tmp_path, reference):
    source = engines / slugify(MINILM) / "text.onnx"
    target = tmp_path / "text.fp16.onnx"
    convert_to_fp16(source, target)
    model = Model.load(Repository(engines).find(MINILM), RuntimeConfig(packing=False))
    texts = ["a cat", "the quick brown fox " * 20, "日本語のテキスト"]
    ids = model.text.tokenizer.token_ids(texts)
    names = model.text.tower.input_names
    batch = model.text.tokenizer.batch(ids, names)
    half = ort.InferenceSession(str(target))
    assert [i.type for i in half.get_inputs()] == ["tensor(int64)"] * 3
    assert half.get_outputs()[0].type == "tensor(float)"
    converted = half.run(None, batch)[0]
    full = ort.InferenceSession(str(source)).run(None, batch)[0]
    assert cosines(converted, full).min() >= 0.999
    assert target.stat().st_size < 0.6 * source.stat().st_size


TENSORRT_HERE = importlib.util.find_spec("tensorrt") is not None


def test_tensorrt_build_fails_at_once_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [
            str(BIN / "ingrain-build"),
            str(tmp_path / "never-loaded"),
            "--tensorrt",
            "--engines",
            str(tmp_path / "engines"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    if not TENSORRT_HERE:  # where it is, the missing source is the clear message
        assert "--tensorrt needs TensorRT and a CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "engines" / "never-loaded").exists()


def test_profiles_from_the_build_flags_are_clamped_and_checked():
    options = TensorRTOptions.for_ranges((1, 64, 32), (None, None, None), None)
    assert options.batch == (1, 32, 32) and options.sequence is None
    options = TensorRTOptions.for_ranges((1, 8, 32), (None, 300, None), 256)
    assert options.sequence == (1, 256, 256)
    options = TensorRTOptions.for_ranges((2, 1, 32), (16, 8, None), None)
    assert options.batch == (2, 2, 32) and options.sequence == (16, 16, 512)
    with pytest.raises(BuildError, match="batch profile 64/32/32"):
        TensorRTOptions.for_ranges((64, 8, 32), (None, None, None), None)
    with pytest.raises(BuildError, match="sequence profile 300/256/256"):
        TensorRTOptions.for_ranges((1, 8, 32), (300, None, 256), None)
    # The plan's largest batch is the engine's max batch: one number, not two that disagree.
    with pytest.raises(BuildError, match="max batch is 32"):
        BuildOptions(tensorrt=TensorRTOptions(batch=(1, 4, 16)))
    assert BuildOptions(16, tensorrt=TensorRTOptions(batch=(1, 4, 16))).max_batch == 16


def test_bad_profile_flags_are_one_clear_line(tmp_path):
    result = subprocess.run(
        [str(BIN / "ingrain-build"), str(tmp_path / "m"), "--tensorrt", "--min-batch", "64"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "batch profile 64/32/32" in result.stderr


def planned_copy(engines, tmp_path):
    """The demo model with a (placeholder) plan recorded, as a GPU build would leave it."""
    directory = tmp_path / slugify(MINILM)
    copy_tree(engines / slugify(MINILM), directory)
    manifest = Manifest.read(directory)
    text = replace(manifest.towers["text"], plan="text.plan", plan_info=PLAN)
    (directory / "text.plan").write_bytes(b"built on another machine")
    replace(manifest, towers={"text": text}).write(directory)
    return Repository(tmp_path).find(MINILM)


def test_auto_falls_back_to_the_cpu_with_a_warning(engines, tmp_path, caplog):
    """Without TensorRT the plan cannot run here; with it, this plan cannot be deserialised:
    either way `auto` serves from the CPU and says why, and `tensorrt` refuses."""
    entry = planned_copy(engines, tmp_path)
    with caplog.at_level(logging.WARNING):
        model = Model.load(entry, RuntimeConfig(backend="auto"))
    assert embed_texts(model, ["still served"]).shape == (1, 384)
    assert "falling back to the CPU" in caplog.text and "text.plan" in caplog.text
    with pytest.raises(ModelLoadError):
        Model.load(entry, RuntimeConfig(backend="tensorrt"))
