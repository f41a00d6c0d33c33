"""The engine directory's manifest (`model.json`): the whole contract between builder and server.

The builder writes it last, after every file it names is in place; the server trusts nothing in
an engine directory that the manifest does not describe.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_FILE = "model.json"

LIBRARIES = ("sentence_transformers", "open_clip", "timm", "cross_encoder", "sparse_encoder")
# rerank and text-classification models have one "pair" tower: token ids in, logits out.
# sparse-embedding (SPLADE) models have a text tower whose output is vocabulary-sized.
TASKS = ("embedding", "classification", "rerank", "text-classification", "sparse-embedding")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or does not match the schema."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[str | int]


@dataclass(frozen=True)
class ProfileRange:
    """Batch and (text) sequence ranges of one optimization profile: (min, opt, max)."""

    batch: tuple[int, int, int]
    sequence: tuple[int, int, int] | None = None

    def shapes(self, input_shape: list[int | str]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shapes for an input whose dims are 'batch', 'sequence' or fixed."""
        result = []
        for which in range(3):
            shape = []
            for dim in input_shape:
                if dim == "batch":
                    shape.append(self.batch[which])
                elif dim == "sequence":
                    if self.sequence is None:
                        raise ValueError("a sequence dimension needs a sequence range")
                    shape.append(self.sequence[which])
                else:
                    shape.append(int(dim))
            result.append(tuple(shape))
        return tuple(result)

    def fits(self, batch: int, sequence: int | None) -> bool:
        low, _, high = self.batch
        if not low <= batch <= high:
            return False
        if sequence is None or self.sequence is None:
            return True
        return self.sequence[0] <= sequence <= self.sequence[2]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileRange:
        sequence = data.get("sequence")
        return cls(tuple(data["batch"]), tuple(sequence) if sequence else None)


@dataclass(frozen=True)
class PlanSpec:
    """A TensorRT plan's provenance and optimization profiles (runtime.backends.tensorrt.plan
    decides from it whether the plan runs on a host). Stored as the tower's `plan_info`."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profiles: tuple[ProfileRange, ...]
    cuda_version: str | None = None
    precision: str = "fp32"
    strongly_typed: bool = False
    # none / same_cc: the building GPU's compute capability only; ampere_plus: 8.0 and later.
    hardware_compat: str = "none"
    # Runs on later TensorRT versions of the next major too (the plan carries its runtime).
    version_compatible: bool = False
    opt_level: int | None = None
    onnx_sha256: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanSpec:
        profiles = tuple(ProfileRange.from_dict(profile) for profile in data["profiles"])
        return _from_dict(cls, {**data, "profiles": profiles})


@dataclass(frozen=True)
class PackedSpec:
    """A text tower's packed graph: several texts per row, told apart by a segment id per token
    (runtime.batching.packing), with the build's figures for it against the source library and
    the padded graph (min_cosine, max_abs_error)."""

    onnx: str
    inputs: list[TensorSpec]
    output: TensorSpec
    figures: dict[str, Any] = field(default_factory=dict)
    # The TensorRT plan built from this graph (profiles over rows x row length), if any.
    plan: str | None = None
    plan_info: PlanSpec | None = None
    # Its verified int8 variant, as the tower's `int8` (the same MatMuls kept f32), if any.
    int8: dict | None = None


@dataclass(frozen=True)
class TowerSpec:
    """One exported network (text or image tower) and the profile it was built for."""

    onnx: str
    inputs: list[TensorSpec]
    output: TensorSpec
    dim: int
    max_batch: int
    max_seq_len: int | None = None
    plan: str | None = None
    plan_info: PlanSpec | None = None
    # int8/uint8 output ranges from a calibration set: {"items", "raw": [mins, maxs],
    # "normalized": [mins, maxs]} (runtime.quantize).
    quantization: dict | None = None
    # OpenVINO precision (f32, bf16) -> ingrain-build's figures for it against the source
    # library (min_cosine, max_abs_error; top1_agreement, max_probability_error for classifiers).
    # Absent in manifests from before OpenVINO: `auto` then serves f32.
    precisions: dict[str, dict] | None = None
    # Text towers: the packed graph, served on the CPU backends in place of `onnx`. Absent when
    # the builder kept the padded graph only (build["packing"] says why) and in older manifests.
    packed: PackedSpec | None = None
    # The verified int8 variant (ingrain-build --int8): {"onnx": file, "min_cosine",
    # "mean_cosine", "top10_overlap" (or "rank_agreement" for pair towers), "kept_f32": [MatMul
    # node names left in f32], "thresholds", "items"}. Served only when asked for.
    int8: dict | None = None


@dataclass(frozen=True)
class TokenizerSpec:
    """How to reproduce the source model's tokenization with the `tokenizers` library alone."""

    file: str
    max_length: int
    truncation_side: str = "right"
    padding_side: str = "right"
    pad_id: int = 0
    pad_token: str = "[PAD]"
    # open_clip pads every text to the context length its text tower was built for.
    pad_to_max_length: bool = False
    # open_clip's cleaning step before tokenizing: lower, whitespace or canonicalize.
    clean: str | None = None
    # open_clip's strip_sep_token: this id becomes 0 in the token ids.
    strip_token_id: int | None = None


@dataclass(frozen=True)
class PromptSpec:
    """sentence-transformers prompts: text put before the input, by name, and the name used
    when a request names none. Whether pooling leaves a prompt out (`include_prompt: false`)
    shows in the text tower's inputs: such a tower takes a `pooling_mask`."""

    prompts: dict[str, str] = field(default_factory=dict)
    default: str | None = None


@dataclass(frozen=True)
class SparseQuerySpec:
    """Inference-free SPLADE's query side (sentence-transformers' SparseStaticEmbedding in a
    Router): no network, a weight per vocabulary token (`weights`, a float32 .npy), looked up
    for each distinct token of a query as `tokenizer` (which adds no special tokens) gives them.
    `default_task` is the side ("query" or "document") serving requests that name none, as
    SparseEncoder.encode does without a task."""

    weights: str
    tokenizer: TokenizerSpec
    default_task: str = "document"


@dataclass(frozen=True)
class ImageSpec:
    """How to turn a decoded image into the image tower's uint8 NCHW input, with Pillow.

    Sizes are [height, width]. resize_mode: `shortest` scales the shorter edge to
    `resize_size[0]` (torchvision's Resize(int)); `keep_ratio` scales by the shorter (`longest`
    0) or longer (1) edge's ratio to `resize_size`; `squash` scales straight to `resize_size`.
    `resize_size` defaults to `size`. Then a centre crop to `size` (padding with `fill_color`,
    one value or one per channel, where the image is smaller) when `crop` is set. Scaling to
    [0, 1] and mean/std normalisation happen inside the graph.
    """

    size: list[int]
    resize_mode: str
    interpolation: str
    mean: list[float]
    std: list[float]
    resize_size: list[int] | None = None
    longest: float = 0.0
    crop: bool = True
    fill_color: int | list[int] = 0


@dataclass(frozen=True)
class ClassifierSpec:
    """How image-tower outputs become class probabilities.

    kind `logits`: the tower outputs one logit per class (timm classifiers).
    kind `zero_shot`: the tower outputs an image embedding; logits are
    logit_scale * cos(image, class embedding) + logit_bias, with the class embeddings (the
    averaged prompt embeddings of each label) in `class_embeddings` (CLIP zero-shot).
    activation `softmax` (one label per image), `sigmoid` (SigLIP: independent per class) or
    `none` (a cross-encoder whose scores are its raw logits).
    """

    kind: str
    labels_file: str = "labels.txt"
    activation: str = "softmax"
    class_embeddings: str | None = None
    logit_scale: float = 1.0
    logit_bias: float | None = None
    prompts: list[str] | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    library: str
    task: str
    towers: dict[str, TowerSpec]
    tokenizer: TokenizerSpec | None = None
    image: ImageSpec | None = None
    classifier: ClassifierSpec | None = None
    prompts: PromptSpec | None = None
    build: dict[str, Any] = field(default_factory=dict)
    # Every other file of the engine directory: relative path -> {"sha256": hex, "bytes": n}
    # (runtime.repository.digests). Readers of a copy (an object-store cache) check them.
    files: dict[str, dict[str, Any]] | None = None
    # Inference-free SPLADE models: the query side, which runs without the text tower.
    sparse_query: SparseQuerySpec | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def named_files(self) -> set[str]:
        """The files the model needs besides the manifest: a copy lacking one cannot serve."""
        named = {
            file
            for tower in self.towers.values()
            for file in (
                tower.onnx,
                tower.plan,
                tower.packed and tower.packed.onnx,
                tower.packed and tower.packed.plan,
                (tower.int8 or {}).get("onnx"),
                tower.packed and (tower.packed.int8 or {}).get("onnx"),
            )
        }
        if self.tokenizer is not None:
            named.add(self.tokenizer.file)
        if self.classifier is not None:
            named |= {self.classifier.labels_file, self.classifier.class_embeddings}
        if self.sparse_query is not None:
            named |= {self.sparse_query.weights, self.sparse_query.tokenizer.file}
        return named - {None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"the manifest is a JSON {type(data).__name__}, not an object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(
                f"schema version {data.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                "rebuild the model with this version of ingrain-build"
            )
        try:
            towers = {key: _tower_from_dict(value) for key, value in data["towers"].items()}
            tokenizer = data.get("tokenizer")
            image = data.get("image")
            classifier = data.get("classifier")
            prompts = data.get("prompts")
            sparse_query = data.get("sparse_query")
            manifest = cls(
                name=data["name"],
                library=data["library"],
                task=data["task"],
                towers=towers,
                tokenizer=_from_dict(TokenizerSpec, tokenizer) if tokenizer else None,
                image=_from_dict(ImageSpec, image) if image else None,
                classifier=_from_dict(ClassifierSpec, classifier) if classifier else None,
                prompts=_from_dict(PromptSpec, prompts) if prompts else None,
                build=data.get("build", {}),
                files=_files(data.get("files")),
                sparse_query=_sparse_query_from_dict(sparse_query) if sparse_query else None,
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ManifestError(f"malformed manifest: {error!r}") from error
        if manifest.library not in LIBRARIES or manifest.task not in TASKS:
            raise ManifestError(f"unknown library {manifest.library!r} or task {manifest.task!r}")
        return manifest

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ManifestError(f"cannot read {path}: {error}") from error
        if not isinstance(data, dict):
            raise ManifestError(f"{path} does not hold a JSON object")
        return cls.from_dict(data)

    def write(self, directory: Path) -> None:
        write_atomically(directory / MANIFEST_FILE, self.to_json())


def _from_dict(kind: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(kind)}
    return kind(**{key: value for key, value in data.items() if key in known})


def _tower_from_dict(data: dict[str, Any]) -> TowerSpec:
    plan_info = data.get("plan_info")
    packed = data.get("packed")
    return replace(
        _from_dict(TowerSpec, data),
        inputs=[_from_dict(TensorSpec, spec) for spec in data["inputs"]],
        output=_from_dict(TensorSpec, data["output"]),
        plan_info=PlanSpec.from_dict(plan_info) if plan_info else None,
        packed=_packed_from_dict(packed) if packed else None,
    )


def _sparse_query_from_dict(data: dict[str, Any]) -> SparseQuerySpec:
    return replace(
        _from_dict(SparseQuerySpec, data), tokenizer=_from_dict(TokenizerSpec, data["tokenizer"])
    )


def _packed_from_dict(data: dict[str, Any]) -> PackedSpec:
    plan_info = data.get("plan_info")
    return replace(
        _from_dict(PackedSpec, data),
        inputs=[_from_dict(TensorSpec, spec) for spec in data["inputs"]],
        output=_from_dict(TensorSpec, data["output"]),
        plan_info=PlanSpec.from_dict(plan_info) if plan_info else None,
    )


def _files(value: Any) -> dict[str, dict[str, Any]] | None:
    if value is not None and not (
        isinstance(value, dict)
        and all(isinstance(name, str) and isinstance(v, dict) for name, v in value.items())
    ):
        raise ManifestError("its files are not a mapping of file names to their digests")
    return value


def write_atomically(path: Path, text: str) -> None:
    """Write a file so readers see either the old content or the new, never a partial one."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            os.fchmod(stream.fileno(), 0o644)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
