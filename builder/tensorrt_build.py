"""ONNX towers -> TensorRT plans with optimization profiles, verified against ONNX Runtime.

Written against the TensorRT 10 and 11 Python APIs (see shared/reference/tensorrt.md): 10.x
builds weakly typed with FP16/BF16 builder flags and keeps normalisation, softmax and reduction
layers in FP32; 11.x has no precision flags and is always strongly typed, so FP16 comes from
converting the ONNX graph first (builder.mixed_precision).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from builder.errors import BuildError
from builder.mixed_precision import convert_to_fp16
from builder.options import TENSORRT_MIN_COSINE, TensorRTOptions
from builder.progress import Progress
from builder.verify import VERIFICATION_TEXTS, compare, verification_images
from runtime.backends.tensorrt.plan import packed_row_lengths, plan_profiles
from runtime.batching.packing import MAX_ROW_TOKENS
from runtime.config import RuntimeConfig
from runtime.models import Model
from runtime.preprocessing.images import decode, preprocess
from runtime.repository import Entry
from runtime.repository.manifest import Manifest, PlanSpec, ProfileRange, TensorSpec, TowerSpec
from runtime.text import TextOptions

PACKED_PLAN = "text.packed.plan"


def add_plans(
    staging: Path, manifest: Manifest, options: TensorRTOptions, progress: Progress
) -> Manifest:
    """Compile every tower of a staged model into a plan, verify each, record them; then the
    packed graphs of text towers (builder.packed_text), each kept only where it compiles and
    matches, else the tower runs its padded plan on TensorRT and build["tensorrt_packing"]
    says why."""
    towers = dict(manifest.towers)
    for key, tower in manifest.towers.items():
        with progress.stage(
            f"Compiling the {key} tower with TensorRT ({options.precision}); this takes minutes"
        ):
            towers[key] = _compile(staging, key, tower, options)
    planned = replace(manifest, towers=towers)
    with progress.stage("Verifying the TensorRT plans against ONNX Runtime"):
        reports = verify_plans(staging, planned, TENSORRT_MIN_COSINE[options.precision])
    for report in reports.values():
        progress.report(report)
    build = {**planned.build, "tensorrt_verification": reports}
    text = planned.towers.get("text")
    if text is not None and text.packed is not None:
        try:
            planned, reports["text packed"] = _with_packed_plan(staging, planned, options, progress)
        except Exception as error:  # the padded plan, verified, still serves
            (staging / PACKED_PLAN).unlink(missing_ok=True)
            build["tensorrt_packing"] = f"its packed graph's plan failed: {error}"
            progress.say(f"    text tower: TensorRT runs it padded: {build['tensorrt_packing']}")
    return replace(planned, build=build)


def _compile(staging: Path, key: str, tower: TowerSpec, options: TensorRTOptions) -> TowerSpec:
    """The tower with a plan of its padded graph."""
    sequence = None
    if any(dim == "sequence" for spec in tower.inputs for dim in spec.shape):
        longest = tower.max_seq_len or 512
        sequence = options.sequence or (1, min(128, longest), longest)
    plan, info = _compile_graph(staging, tower.onnx, tower.inputs, sequence, options, key)
    return replace(tower, plan=plan, plan_info=info, max_batch=options.batch[2])


def _with_packed_plan(
    staging: Path, manifest: Manifest, options: TensorRTOptions, progress: Progress
) -> tuple[Manifest, dict]:
    """The manifest with a plan of the text tower's packed graph, profiles over rows (the
    options' batch range) x row length, and its figures against the padded ONNX graph."""
    tower = manifest.towers["text"]
    packed = tower.packed
    lengths = packed_row_lengths(tower.max_seq_len, MAX_ROW_TOKENS)
    with progress.stage("Compiling the packed text tower with TensorRT (rows x row length)"):
        name = PACKED_PLAN.removesuffix(".plan")
        plan, info = _compile_graph(staging, packed.onnx, packed.inputs, lengths, options, name)
    tower = replace(tower, packed=replace(packed, plan=plan, plan_info=info))
    planned = replace(manifest, towers={**manifest.towers, "text": tower})
    with progress.stage("Verifying the packed TensorRT plan against ONNX Runtime"):
        report = verify_packed_plan(staging, planned, TENSORRT_MIN_COSINE[options.precision])
    progress.report(report)
    return planned, report


def _compile_graph(
    staging: Path,
    onnx: str,
    inputs: list[TensorSpec],
    sequence: tuple[int, int, int] | None,
    options: TensorRTOptions,
    name: str,
) -> tuple[str, PlanSpec]:
    """`onnx` compiled into `name`.plan with profiles over options.batch x `sequence`."""
    import tensorrt as trt

    from runtime.backends.tensorrt import cuda

    major = int(trt.__version__.split(".")[0])
    if major >= 11 and options.precision == "bf16":
        raise BuildError("bf16 on TensorRT 11 needs a bf16 ONNX graph; use --precision fp16")
    source = staging / onnx
    onnx_path = source
    with tempfile.TemporaryDirectory() as scratch:
        if major >= 11 and options.precision == "fp16":
            onnx_path = Path(scratch) / "fp16.onnx"
            convert_to_fp16(source, onnx_path)
        profiles = plan_profiles(options.batch, sequence)
        plan = _build(trt, major, onnx_path, inputs, profiles, options)
    plan_file = f"{name}.plan"
    (staging / plan_file).write_bytes(plan)
    gpu_name, capability = cuda.device()
    info = PlanSpec(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        profiles=tuple(profiles),
        cuda_version=cuda.runtime_version(),
        precision=options.precision,
        strongly_typed=major >= 11,
        hardware_compat=options.hardware_compat,
        version_compatible=options.version_compatible,
        opt_level=options.opt_level,
        onnx_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
    )
    return plan_file, info


def _build(
    trt,
    major: int,
    onnx_path: Path,
    inputs: list[TensorSpec],
    profiles: list[ProfileRange],
    options: TensorRTOptions,
) -> bytes:
    from runtime.backends.tensorrt.engine import LOGGER

    builder = trt.Builder(LOGGER)
    # STRONGLY_TYPED exists in 10.x and 11.x (where it is always on); EXPLICIT_BATCH is gone.
    strongly_typed = major >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, LOGGER)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    config.builder_optimization_level = options.opt_level
    if options.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    elif options.precision == "tf32":
        config.set_flag(trt.BuilderFlag.TF32)
    elif not strongly_typed:
        config.set_flag(
            trt.BuilderFlag.FP16 if options.precision == "fp16" else trt.BuilderFlag.BF16
        )
        _keep_sensitive_layers_fp32(trt, network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if options.hardware_compat != "none":
        levels = {"ampere_plus": "AMPERE_PLUS", "same_cc": "SAME_COMPUTE_CAPABILITY"}
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, levels[options.hardware_compat]
        )
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache_bytes = b""
    if options.timing_cache is not None and options.timing_cache.is_file():
        cache_bytes = options.timing_cache.read_bytes()
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    for profile in profiles:
        optimization = builder.create_optimization_profile()
        for spec in inputs:
            optimization.set_shape(spec.name, *profile.shapes(spec.shape))
        config.add_optimization_profile(optimization)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError("TensorRT could not build the plan (see its log above)")
    if options.timing_cache is not None:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        serialized = bytes(config.get_timing_cache().serialize())
        with tempfile.NamedTemporaryFile(dir=options.timing_cache.parent, delete=False) as handle:
            handle.write(serialized)
        Path(handle.name).replace(options.timing_cache)
    return bytes(plan)


def _keep_sensitive_layers_fp32(trt, network) -> None:
    """Weakly typed FP16/BF16 (10.x): normalisation, softmax and the reductions behind pooling
    and L2 normalisation stay in FP32, where half precision overflows or loses accuracy."""
    sensitive = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        # Only float layers: integer reductions (mask sums, shape arithmetic) stay as they are.
        floating = all(
            layer.get_output(o).dtype in (trt.float32, trt.float16, trt.bfloat16)
            for o in range(layer.num_outputs)
        )
        if layer.type in sensitive and floating:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)


def verify_plans(staging: Path, manifest: Manifest, min_cosine: float) -> dict[str, dict]:
    """Each tower through TensorRT and through ONNX Runtime on the verification inputs; text
    towers with a packed plan too, packed against the padded ONNX graph."""
    entry = Entry(staging, manifest)
    planned = Model.load(entry, RuntimeConfig(backend="tensorrt", packing=False))
    reference = Model.load(entry, RuntimeConfig(backend="onnxruntime", packing=False))
    reports = {}
    try:
        if planned.text is not None:
            texts = VERIFICATION_TEXTS
            rows = reference.text.rows(texts, TextOptions())
            served = planned.text.embed(rows)
            expected = reference.text.embed(rows)
            reports["text"] = _checked(served, expected, "text plan", texts, min_cosine)
        if planned.image is not None:
            pixels = np.stack(
                [preprocess(decode(data, 10**9), manifest.image) for data in verification_images()]
            )
            served = planned.image.embed(pixels)
            expected = reference.image.embed(pixels)
            reports["image"] = _checked(
                served,
                expected,
                "image plan",
                [f"image {i}" for i in range(len(pixels))],
                min_cosine,
            )
    finally:
        planned.close()
        reference.close()
    return reports


def verify_packed_plan(staging: Path, manifest: Manifest, min_cosine: float) -> dict:
    """The text tower's packed plan against its padded ONNX graph on the verification texts,
    all in one packed execution."""
    entry = Entry(staging, manifest)
    planned = Model.load(entry, RuntimeConfig(backend="tensorrt"))
    reference = Model.load(entry, RuntimeConfig(backend="onnxruntime", packing=False))
    try:
        assert planned.text.tower.spec.plan == manifest.towers["text"].packed.plan
        rows = reference.tokenize(VERIFICATION_TEXTS)
        served, expected = planned.text.embed(rows), reference.text.embed(rows)
    finally:
        planned.close()
        reference.close()
    return _checked(served, expected, "packed text plan", VERIFICATION_TEXTS, min_cosine)


def _checked(served, expected, what: str, labels: list, min_cosine: float) -> dict:
    return compare(served, expected, what, [repr(str(label)[:60]) for label in labels], min_cosine)
