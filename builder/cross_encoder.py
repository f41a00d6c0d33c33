"""Cross-encoders (rerankers) and sequence classifiers -> `pair.onnx` + `tokenizer.json` +
labels + manifest.

Both load as a sentence-transformers CrossEncoder, which reads any Hugging Face
`*ForSequenceClassification` model. The graph outputs raw logits; the activation the source
library applies is recorded in the manifest and applied by the runtime, so `raw_scores` can
return the logits exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from builder.errors import BuildError
from builder.onnx_export import OPSET, export_token_model
from builder.options import BuildOptions, write_labels
from builder.packed import add_packed
from builder.packed_pairs import PACKED_FILE, export_packed, unpackable, verify_packed
from builder.progress import Progress
from builder.sentence_transformer import max_length_of, text_inputs, write_tokenizer
from builder.verify import VERIFICATION_TEXTS, check_max_abs, check_token_ids, load_staged
from runtime.classifier import activate
from runtime.models import Model
from runtime.repository.manifest import ClassifierSpec, Manifest, TensorSpec, TowerSpec

OUTPUT = "scores"
TASKS = ("rerank", "text-classification")
# CrossEncoder activations the runtime reproduces, by class name.
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "none", "Softmax": "softmax"}


class _Logits(torch.nn.Module):
    """The CrossEncoder's modules as one module with positional tensor inputs, for tracing."""

    def __init__(self, model: CrossEncoder, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors, strict=True))
        return self.model({**features, "modality": "text"})["scores"]


def verification_pairs() -> list[tuple[str, str]]:
    """Queries against documents, short and long: pairs where either side, or both, runs past
    any maximum length, so `longest_first` truncation is exercised from both sides."""
    texts = VERIFICATION_TEXTS
    return [(texts[i], texts[-1 - i]) for i in range(len(texts))] + [
        (texts[2], texts[-1]),
        (texts[1], texts[2]),
        (texts[2], texts[1]),
    ]


def build(
    source: str, name: str, staging: Path, options: BuildOptions, progress: Progress
) -> Manifest:
    if options.labels is not None:
        raise BuildError(
            "--labels is for timm and CLIP models; a classifier's own id2label is used"
        )
    if options.tensorrt is not None:
        raise BuildError("--tensorrt is not supported for cross-encoders yet; build without it")
    with progress.stage(f"Loading {source} as a sentence-transformers CrossEncoder"):
        try:
            model = CrossEncoder(source, device="cpu")
        except Exception as error:
            raise BuildError(
                f"cannot load {source!r} as a CrossEncoder or sequence classifier: {error}"
            ) from error
    model.eval()
    hf_tokenizer, input_names = text_inputs(source, model)
    max_length = max_length_of(source, model.max_seq_length, options.max_seq_len)
    model.max_seq_length = max_length  # the reference truncates where the server will
    config = model.model.config
    labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(model.num_labels)]
    task = options.task or ("rerank" if len(labels) == 1 else "text-classification")
    activation = _activation(source, model, task, config.problem_type)

    with progress.stage("Writing tokenizer.json and labels.txt"):
        tokenizer = write_tokenizer(staging, hf_tokenizer, max_length)
        labels_file = write_labels(staging, labels)
    with progress.stage(f"Exporting the cross-encoder to ONNX (opset {OPSET})"):
        example = model.preprocess([("a query", "a document"), ("a query", "a longer document")])
        module = _Logits(model, input_names)
        export_token_model(module, example, staging / "pair.onnx", input_names, OUTPUT)
    manifest = Manifest(
        name=name,
        library="cross_encoder",
        task=task,
        towers={
            "pair": TowerSpec(
                onnx="pair.onnx",
                inputs=[TensorSpec(n, "int64", ["batch", "sequence"]) for n in input_names],
                output=TensorSpec(OUTPUT, "float32", ["batch", len(labels)]),
                dim=len(labels),
                max_batch=options.max_batch,
                max_seq_len=max_length,
            )
        },
        tokenizer=tokenizer,
        classifier=ClassifierSpec(kind="logits", labels_file=labels_file, activation=activation),
        build={"source": source, "architectures": config.architectures},
    )
    checks = _checks(model, task, activation, max_length)
    with progress.stage("Verifying ONNX Runtime against the source model"):
        report, padded = _verify(staging, manifest, model, checks)
    progress.report(report)
    manifest = replace(manifest, build={**manifest.build, "verification": {"pair": report}})
    manifest = add_packed(
        manifest,
        "pair",
        staging / PACKED_FILE,
        unpackable(model),
        lambda: export_packed(model, staging / PACKED_FILE, input_names, len(labels)),
        lambda trial: _verify_packed(staging, trial, checks, padded),
        progress,
    )
    if options.int8 is not None:
        if task != "rerank":
            raise BuildError("--int8 is for embedding models and rerankers, not text classifiers")
        from builder.int8 import add_int8, ranking_plan

        plan = ranking_plan(
            lambda pairs: model.predict(pairs, batch_size=16),
            list(hf_tokenizer.get_vocab()),
            options.int8,
        )
        manifest = add_int8(staging, manifest, "pair", plan, progress)
    return manifest


def _activation(source: str, model: CrossEncoder, task: str, problem_type: str | None) -> str:
    """CrossEncoder.predict's activation for rerankers; transformers' convention (softmax, or
    sigmoid for multi-label problems) for classifiers."""
    if task not in TASKS:
        raise BuildError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    if task == "text-classification":
        multi = problem_type == "multi_label_classification" or model.num_labels == 1
        return "sigmoid" if multi else "softmax"
    if model.num_labels != 1:
        raise BuildError(
            f"{source!r} has {model.num_labels} labels; a reranker has one score. Build it with "
            "--task text-classification"
        )
    kind = type(model.activation_fn).__name__
    if kind not in ACTIVATIONS:
        raise BuildError(f"{source!r} uses the activation {kind}, which the server cannot apply")
    return ACTIVATIONS[kind]


@dataclass(frozen=True)
class _Checks:
    """The verification inputs of a pair tower and the source library's outputs for them:
    rerankers' scores (CrossEncoder.predict) on pairs, or classifiers' probabilities (the
    transformers model) on texts."""

    inputs: list
    first: list[str]
    second: list[str] | None
    names: list[str]
    expected: np.ndarray
    what: str


def _checks(model: CrossEncoder, task: str, activation: str, max_length: int) -> _Checks:
    if task == "rerank":
        pairs = verification_pairs()
        first, second = [q for q, _ in pairs], [d for _, d in pairs]
        names = [f"the pair ({q[:30]!r}, {d[:30]!r})" for q, d in pairs]
        expected = np.asarray(model.predict(pairs, batch_size=8), dtype=np.float32)
        return _Checks(pairs, first, second, names, expected, "reranker")
    texts = VERIFICATION_TEXTS
    encoded = model[0].tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model.model(**encoded).logits.float().numpy()
    expected = activate(logits, activation)
    names = [repr(text[:60]) for text in texts]
    return _Checks(texts, texts, None, names, expected, "text classifier")


def _outputs(served: Model, checks: _Checks, order: list[int] | None = None) -> np.ndarray:
    """The served model's scores or probabilities for the checks' inputs (in `order`)."""
    assert served.pair is not None and served.classifier is not None
    order = order if order is not None else list(range(len(checks.first)))
    first = [checks.first[i] for i in order]
    second = None if checks.second is None else [checks.second[i] for i in order]
    logits = served.pair.logits(first, second, truncate=True)
    if checks.second is not None:
        return activate(logits, served.pair.activation)[:, 0]
    return served.classifier.probabilities(logits)


def _verify(
    staging: Path, manifest: Manifest, model: CrossEncoder, checks: _Checks
) -> tuple[dict, np.ndarray]:
    """Token ids equal to the source tokenizer's, and outputs within 1e-4 of the source
    library's; the figures and the padded graph's outputs."""
    served = load_staged(staging, manifest)
    try:
        _check_ids(served, model, checks)
        ours = _outputs(served, checks)
        return check_max_abs(ours, checks.expected, checks.what, checks.names), ours
    finally:
        served.close()


def _verify_packed(staging: Path, trial: Manifest, checks: _Checks, padded: np.ndarray) -> dict:
    """The packed graph in several mixes against the source library and the padded graph."""
    served = load_staged(staging, trial)
    try:
        assert served.pair is not None and served.pair.tower.spec.onnx == PACKED_FILE
        run = partial(_outputs, served, checks)
        return verify_packed(run, padded, checks.expected, checks.names, checks.what)
    finally:
        served.close()


def _check_ids(served: Model, model: CrossEncoder, checks: _Checks) -> None:
    assert served.pair is not None
    tokenizer = served.pair.tokenizer
    encodings = tokenizer.encode(checks.first, checks.second)
    items = [(encoding.ids, encoding.type_ids) for encoding in encodings]
    ours = tokenizer.batch(items, ["input_ids"])["input_ids"]
    theirs = model.preprocess(checks.inputs)["input_ids"].numpy()
    check_token_ids(ours, theirs, checks.names)
