"""`ingrain-build --int8`: a verified int8 variant of a text tower, opt in.

ONNX Runtime's dynamic quantisation: the weights of MatMul nodes become int8 per output channel,
activations are quantised to uint8 per tensor at run time (DynamicQuantizeLinear + MatMulInteger),
so no calibration set decides the ranges. Some MatMuls lose more than others (those fed by
GELU outputs, with their long-tailed activations, most), so a sensitivity search keeps the
most sensitive in f32 until the tower, served through the runtime exactly as it will be, reaches
the thresholds against the source library on held-out texts. No mix that reaches them: no
variant, and the build says so.

Sensitivity of a MatMul: the relative error of its own output when its weight and input alone
are quantised as above, measured on the f32 graph's real activations (one f32 run on texts
apart from the held-out ones).

A tower with a packed graph gets its int8 variant too, with the same MatMuls kept f32, verified
the same way served packed; where it falls short, int8 serves the padded variant.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from builder.calibration import calibration_texts
from builder.options import Int8Thresholds
from builder.progress import Progress
from builder.verify import VERIFICATION_TEXTS, cosine_rows
from runtime.backends.choice import cpu_class
from runtime.classifier import activate
from runtime.config import RuntimeConfig
from runtime.models import Model
from runtime.repository import Entry
from runtime.repository.manifest import Manifest
from runtime.text import TextOptions

log = logging.getLogger(__name__)

NEIGHBOURS = 10
SENSITIVITY_TEXTS = 64
HELD_OUT_TEXTS = 256
# Held-out texts come from the same generator as the sensitivity texts, with another seed.
HELD_OUT_SEED = 1
FEED_ROWS = 16
SAMPLED_ROWS = 256


# The runtime's output of the staged model for texts (embeddings before normalisation).
Embed = Callable[[Model, list[str]], np.ndarray]


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul nodes whose second input is a 2-D weight: the ones dynamic quantisation turns
    into MatMulInteger (activation x activation products, as in attention, stay f32)."""
    weights = {init.name for init in model.graph.initializer if len(init.dims) == 2}
    return [
        node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights
    ]


def _quantised_weight(weight: np.ndarray) -> np.ndarray:
    """int8 symmetric per output channel (column), back in float."""
    scale = np.maximum(np.abs(weight).max(axis=0, keepdims=True), 1e-12) / 127.0
    return np.clip(np.round(weight / scale), -127, 127) * scale


def _quantised_activation(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`rows` of `values` quantised to uint8 asymmetric with the range of the whole tensor, as
    DynamicQuantizeLinear does, back in float."""
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = max(high - low, 1e-12) / 255.0
    zero = np.round(-low / scale)
    return (np.clip(np.round(rows / scale) + zero, 0, 255) - zero) * scale


def sensitivities(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[tuple[str, float]]:
    """(MatMul node, relative output error when quantised alone), most sensitive first. The
    error is measured on SAMPLED_ROWS token positions per execution (the ranges on all)."""
    model = onnx.load(str(path))
    nodes = weight_matmuls(model)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    quantised = {
        name: _quantised_weight(weight)
        for name, weight in weights.items()
        if name in {node.input[1] for node in nodes}
    }
    activations = list(dict.fromkeys(node.input[0] for node in nodes))
    existing = {output.name for output in model.graph.output}
    for name in activations:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    errors = {node.name: [0.0, 0.0] for node in nodes}
    rng = np.random.default_rng(0)
    for feed in feeds:
        values = dict(zip(activations, session.run(activations, feed), strict=True))
        for node in nodes:
            inputs, weight = values[node.input[0]], weights[node.input[1]]
            flat = inputs.reshape(-1, inputs.shape[-1])
            rows = flat[rng.choice(len(flat), min(SAMPLED_ROWS, len(flat)), replace=False)]
            exact = rows @ weight
            approximate = _quantised_activation(inputs, rows) @ quantised[node.input[1]]
            errors[node.name][0] += float(np.sum((exact - approximate) ** 2))
            errors[node.name][1] += float(np.sum(exact**2))
    ranked = [(name, (error / max(total, 1e-30)) ** 0.5) for name, (error, total) in errors.items()]
    return sorted(ranked, key=lambda item: item[1], reverse=True)


class _NoPreprocessingHint(logging.Filter):
    """ONNX Runtime suggests its pre-processing on every call; the graph is already the
    optimised export, and the verification judges the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantise(source: Path, target: Path, keep_f32: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint = _NoPreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=keep_f32,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.getLogger().removeFilter(hint)


def neighbour_overlap(served: np.ndarray, expected: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean share of each text's k nearest other texts (by cosine) that both agree on."""
    k = min(k, len(served) - 1)
    if k < 1:
        return 1.0

    def nearest(vectors: np.ndarray) -> np.ndarray:
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :k]

    ours, theirs = nearest(served.astype(np.float64)), nearest(expected.astype(np.float64))
    shared = [len(set(a) & set(b)) / k for a, b in zip(ours, theirs, strict=True)]
    return float(np.mean(shared))


@dataclass(frozen=True)
class Verification:
    """How one kind of tower is judged in int8 against its source library: inputs for the
    sensitivity ranking, the served outputs on held-out inputs, the reference outputs on them,
    the figures from both, and whether the figures pass."""

    feeds: list[dict[str, np.ndarray]]
    served: Callable[[Model], np.ndarray]
    expected: np.ndarray
    figures: Callable[[np.ndarray, np.ndarray], dict]
    passes: Callable[[dict], bool]
    summary: Callable[[dict], str]
    requirement: str


# Builds the Verification from the staged model in f32 (its tokenizer, its tower's batching).
Plan = Callable[[Model], Verification]


def embedding_plan(
    reference: Callable[[list[str]], np.ndarray], embed: Embed, thresholds: Int8Thresholds
) -> Plan:
    """Embeddings: cosine to the source library on every held-out text, and top-10 neighbour
    overlap among them."""

    def plan(f32: Model) -> Verification:
        assert f32.text is not None
        vocabulary = f32.text.tokenizer.vocabulary()
        held_out = [
            *VERIFICATION_TEXTS,
            *calibration_texts(vocabulary, HELD_OUT_TEXTS, seed=HELD_OUT_SEED),
        ]
        rows = f32.text.rows(calibration_texts(vocabulary, SENSITIVITY_TEXTS), TextOptions())
        collate = f32.text.tower.collate
        return Verification(
            feeds=[collate(rows[i : i + FEED_ROWS]) for i in range(0, len(rows), FEED_ROWS)],
            served=lambda model: embed(model, held_out),
            expected=np.asarray(reference(held_out), dtype=np.float32),
            figures=lambda served, expected: {
                "items": len(served),
                "min_cosine": float(cosine_rows(served, expected).min()),
                "mean_cosine": float(cosine_rows(served, expected).mean()),
                "top10_overlap": neighbour_overlap(served, expected),
                "thresholds": {
                    "min_cosine": thresholds.min_cosine,
                    "top10_overlap": thresholds.min_overlap,
                },
            },
            passes=lambda figures: (
                figures["min_cosine"] >= thresholds.min_cosine
                and figures["top10_overlap"] >= thresholds.min_overlap
            ),
            summary=lambda figures: (
                f"min cosine {figures['min_cosine']:.4f}, mean "
                f"{figures['mean_cosine']:.4f}, top-{NEIGHBOURS} overlap "
                f"{figures['top10_overlap']:.3f}"
            ),
            requirement=f"min cosine >= {thresholds.min_cosine} and top-{NEIGHBOURS} neighbour "
            f"overlap >= {thresholds.min_overlap} on {len(held_out)} held-out texts",
        )

    return plan


QUERIES = 32
DOCUMENTS_PER_QUERY = 8


def ranking_plan(
    reference: Callable[[list[tuple[str, str]]], np.ndarray],
    vocabulary: list[str],
    thresholds: Int8Thresholds,
) -> Plan:
    """Rerankers: on held-out queries of eight documents each, the share of document pairs
    each query's int8 scores order as the source library's do (rank agreement)."""

    def pairs(seed: int, queries: int) -> tuple[list[str], list[str]]:
        short = [
            " ".join(text.split()[:8]) for text in calibration_texts(vocabulary, queries, seed=seed)
        ]
        documents = calibration_texts(vocabulary, queries * DOCUMENTS_PER_QUERY, seed=seed + 1)
        return [q for q in short for _ in range(DOCUMENTS_PER_QUERY)], documents

    first, second = pairs(HELD_OUT_SEED + 1, QUERIES)

    def plan(f32: Model) -> Verification:
        assert f32.pair is not None
        sensitivity = f32.pair.tokenizer.encode(*pairs(HELD_OUT_SEED + 3, 8))
        items = [(encoding.ids, encoding.type_ids) for encoding in sensitivity]
        collate = f32.pair.tower.collate

        def served(model: Model) -> np.ndarray:
            assert model.pair is not None
            logits = model.pair.logits(first, second, truncate=True)
            return activate(logits, model.pair.activation)[:, 0]

        return Verification(
            feeds=[collate(items[i : i + FEED_ROWS]) for i in range(0, len(items), FEED_ROWS)],
            served=served,
            expected=np.asarray(reference(list(zip(first, second, strict=True))), np.float32),
            figures=lambda ours, theirs: {
                "items": len(ours),
                "rank_agreement": rank_agreement(ours, theirs, DOCUMENTS_PER_QUERY),
                "max_abs_error": float(np.abs(ours - theirs).max()),
                "thresholds": {"rank_agreement": thresholds.min_overlap},
            },
            passes=lambda figures: figures["rank_agreement"] >= thresholds.min_overlap,
            summary=lambda figures: (
                f"rank agreement {figures['rank_agreement']:.3f}, max abs "
                f"error {figures['max_abs_error']:.2e}"
            ),
            requirement=f"rank agreement >= {thresholds.min_overlap} on {QUERIES} held-out "
            f"queries of {DOCUMENTS_PER_QUERY} documents",
        )

    return plan


def rank_agreement(ours: np.ndarray, theirs: np.ndarray, group: int) -> float:
    """Over consecutive groups of `group` scores (one query's documents), the share of
    document pairs both order alike (ties in the reference count as agreeing)."""
    agreeing = total = 0
    for start in range(0, len(ours), group):
        a, b = ours[start : start + group], theirs[start : start + group]
        for i in range(len(a)):
            for j in range(i + 1, len(a)):
                total += 1
                agreeing += (a[i] - a[j]) * (b[i] - b[j]) > 0 or b[i] == b[j]
    return agreeing / max(total, 1)


def add_int8(
    staging: Path,
    manifest: Manifest,
    key: str,
    plan: Plan,
    progress: Progress,
) -> Manifest:
    """The manifest with a verified int8 variant of its `key` tower, or unchanged but for the
    reason in its build record (and the build saying why) when no mix of int8 and f32 MatMuls
    passes `plan`'s verification."""
    tower = manifest.towers[key]
    source = staging / tower.onnx
    target = staging / f"{Path(tower.onnx).stem}.int8.onnx"
    f32 = _load(staging, manifest, None)
    try:
        check = plan(f32)
    finally:
        f32.close()
    with progress.stage(f"Ranking MatMul sensitivity to int8 on {len(check.feeds)} batches"):
        ranked = [name for name, _ in sensitivities(source, check.feeds)]

    def attempt(keep: list[str]) -> dict:
        with progress.stage(f"int8 with {len(keep)} of {len(ranked)} MatMuls kept f32"):
            quantise(source, target, keep)
            model = _load(staging, _with_int8(manifest, key, {"onnx": target.name}), "int8")
            try:
                served = check.served(model)
            finally:
                model.close()
        figures = {
            **check.figures(served, check.expected),
            "kept_f32": keep,
            "verified_on": cpu_class(),
        }
        progress.say(f"    {check.summary(figures)}")
        return figures

    figures = search(ranked, attempt, check.passes)
    if figures is None:
        target.unlink(missing_ok=True)
        why = (
            f"no int8 variant: no mix of int8 and f32 MatMuls reached {check.requirement} "
            f"against {manifest.library}; the model serves f32 (and bf16 where verified)"
        )
        progress.say(f"    {why}")
        return replace(manifest, build={**manifest.build, "int8": why})
    manifest = _with_int8(manifest, key, {"onnx": target.name, **figures})
    if manifest.towers[key].packed is None:
        return manifest
    return _add_packed_int8(staging, manifest, key, check, progress)


def _add_packed_int8(
    staging: Path, manifest: Manifest, key: str, check: Verification, progress: Progress
) -> Manifest:
    """`manifest` with the int8 variant of `key`'s packed graph as well: the same MatMuls kept
    f32, verified as the padded variant was but served packed. Where it falls short, without
    it, saying why in build["int8_packing"]: int8 then serves the padded variant."""
    tower = manifest.towers[key]
    assert tower.packed is not None and tower.int8 is not None
    source = staging / tower.packed.onnx
    target = staging / f"{Path(tower.packed.onnx).stem}.int8.onnx"
    keep = counterparts(staging / tower.onnx, source, tower.int8["kept_f32"])
    if keep is None:
        why = "int8 runs padded: the packed graph's MatMuls do not match the padded graph's"
        progress.say(f"    {why}")
        return replace(manifest, build={**manifest.build, "int8_packing": why})
    try:
        with progress.stage(f"Verifying the packed graph in int8 ({len(keep)} MatMuls kept f32)"):
            quantise(source, target, keep)
            trial = _with_packed_int8(manifest, key, {"onnx": target.name})
            model = _load(staging, trial, "int8")
            try:
                figures = check.figures(check.served(model), check.expected)
            finally:
                model.close()
        progress.say(f"    packed: {check.summary(figures)}")
        short = None if check.passes(figures) else f"fell short of {check.requirement}"
    except Exception as error:  # the padded variant stands: int8 serves it
        short = f"failed: {error}"
    if short is not None:
        target.unlink(missing_ok=True)
        why = f"int8 runs padded: the packed graph in int8 {short}"
        progress.say(f"    {why}")
        return replace(manifest, build={**manifest.build, "int8_packing": why})
    int8 = {"onnx": target.name, **figures, "kept_f32": keep, "verified_on": cpu_class()}
    return _with_packed_int8(manifest, key, int8)


def counterparts(source: Path, target: Path, names: list[str]) -> list[str] | None:
    """The weight MatMuls of graph `target` that multiply by the same weights as the nodes
    `names` of graph `source` (the packed graph's counterparts of the padded graph's: exported
    from the same modules, under other names); None when one has none."""

    def by_weight(path: Path) -> dict[str, str]:
        model = onnx.load(str(path))
        weights = {init.name: init for init in model.graph.initializer}

        def digest(name: str) -> str:
            array = numpy_helper.to_array(weights[name])
            return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()

        return {node.name: digest(node.input[1]) for node in weight_matmuls(model)}

    owners: dict[str, list[str]] = {}
    for name, digest in by_weight(target).items():
        owners.setdefault(digest, []).append(name)
    digests = by_weight(source)
    matched = [owners.get(digests.get(name, ""), []) for name in names]
    if not all(matched):
        return None
    return list(dict.fromkeys(node for nodes in matched for node in nodes))


def search(
    ranked: list[str], attempt: Callable[[list[str]], dict], passes: Callable[[dict], bool]
) -> dict | None:
    """The figures of the passing mix that keeps the fewest of the most sensitive MatMuls in
    f32 (its file the last one `attempt` wrote), or None. Keeps none, then doubles, then
    bisects between the last failing and the first passing count; keeping all of them would
    be no int8 variant at all."""
    failing, kept, best = -1, 0, None
    while kept < len(ranked):
        figures = attempt(ranked[:kept])
        if passes(figures):
            best = (kept, figures)
            break
        failing, kept = kept, max(1, kept * 2)
    if best is None:
        return None
    passing = best[0]
    while passing - failing > 1:
        middle = (passing + failing) // 2
        figures = attempt(ranked[:middle])
        if passes(figures):
            passing, best = middle, (middle, figures)
        else:
            failing = middle
    if figures is not best[1]:  # the file on disk is the last attempt's: write the best again
        return attempt(ranked[: best[0]])
    return best[1]


def _with_int8(manifest: Manifest, key: str, int8: dict) -> Manifest:
    tower = replace(manifest.towers[key], int8=int8)
    return replace(manifest, towers={**manifest.towers, key: tower})


def _with_packed_int8(manifest: Manifest, key: str, int8: dict) -> Manifest:
    tower = manifest.towers[key]
    assert tower.packed is not None
    packed = replace(tower.packed, int8=int8)
    return replace(manifest, towers={**manifest.towers, key: replace(tower, packed=packed)})


def _load(staging: Path, manifest: Manifest, precision: str | None) -> Model:
    """The staged model on ONNX Runtime (f32, or its int8 variant), not warmed up (the search
    runs it at once). In f32 and while the manifest has no packed int8 variant, on the padded
    graph: the int8 variant is made from it, so its sensitivity feeds are padded rows."""
    packing = precision == "int8" and any(
        tower.packed is not None and tower.packed.int8 is not None
        for tower in manifest.towers.values()
    )
    config = RuntimeConfig(backend="onnxruntime", precision=precision or "f32", packing=packing)
    return Model.load(Entry(staging, manifest), config, warm_up=False)
