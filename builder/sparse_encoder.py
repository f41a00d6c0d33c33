"""sentence-transformers SparseEncoder (SPLADE) models -> `text.onnx` whose output is the
vocabulary-sized sparse vector: the MLM head, SPLADE's activation (log(1 + relu)) and its pooling
(max or sum over tokens) all run in the graph, so the server only picks out the non-zeros.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from builder.errors import BuildError
from builder.onnx_export import OPSET, export_token_model, token_tower
from builder.options import BuildOptions
from builder.progress import Progress
from builder.sentence_transformer import (
    apply_prompts,
    max_length_of,
    text_inputs,
    write_tokenizer,
)
from builder.verify import (
    VERIFICATION_TEXTS,
    check_token_ids,
    cosine_rows,
    load_staged,
    verify_precisions,
)
from runtime.models import Model
from runtime.repository.manifest import Manifest
from runtime.sparse import SPARSE_TASK
from runtime.text import TextOptions

OUTPUT = "sparse_embedding"
# float32 sums carry an absolute error, so near zero a relative bound needs a floor: values
# agree within MAX_RELATIVE_ERROR of the reference's value plus ZERO_ROUNDING of the row's
# largest value; an index present on one side only is a mismatch unless its value is within
# that floor (the two round it to zero differently).
MAX_RELATIVE_ERROR = 1e-4
ZERO_ROUNDING = 1e-5


class _SpladeEmbedding(torch.nn.Module):
    """The transformer's MLM logits, then SPLADE: log(1 + relu(logits)) (once more log1p for
    `log1p_relu`) over the attended tokens, pooled by max or sum. Written out of place, as
    sentence-transformers' SpladePooling computes it in eval mode."""

    def __init__(self, transformer: torch.nn.Module, pooling: torch.nn.Module, names: list[str]):
        super().__init__()
        self.transformer = transformer
        self.strategy = pooling.pooling_strategy
        self.double_log = pooling.activation_function == "log1p_relu"
        self.input_names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = self.transformer(dict(zip(self.input_names, tensors, strict=True)))
        logits = features["token_embeddings"]
        mask = features["attention_mask"].unsqueeze(-1).to(logits.dtype)
        scores = torch.log1p(torch.relu(logits * mask))
        if self.double_log:
            scores = torch.log1p(scores)
        return scores.amax(dim=1) if self.strategy == "max" else scores.sum(dim=1)


def load(source: str, progress: Progress):
    from sentence_transformers import SparseEncoder

    with progress.stage(f"Loading {source} with sentence-transformers (SparseEncoder)"):
        try:
            model = SparseEncoder(source, device="cpu")
        except Exception as error:
            raise BuildError(f"cannot load {source!r} as a SparseEncoder: {error}") from error
    kinds = [type(module).__name__ for module in model]
    if len(kinds) != 2 or kinds[1] != "SpladePooling":
        raise BuildError(
            f"{source!r} has modules {kinds}; ingrain-build serves SPLADE encoders (an MLM "
            "transformer then SpladePooling), not inference-free or other sparse encoders yet"
        )
    return model.eval()


def build(
    source: str, name: str, staging: Path, options: BuildOptions, progress: Progress
) -> Manifest:
    if options.labels is not None:
        raise BuildError("--labels is for timm classifiers and CLIP zero-shot models")
    model = load(source, progress)
    hf_tokenizer, input_names = text_inputs(source, model)
    prompts = apply_prompts(model, options)
    max_length = max_length_of(source, model.max_seq_length, options.max_seq_len)
    with progress.stage("Writing tokenizer.json"):
        tokenizer = write_tokenizer(staging, hf_tokenizer, max_length)
    with progress.stage(f"Exporting the sparse text tower to ONNX (opset {OPSET})"):
        example = model.preprocess(["a short example", "and a somewhat longer example sentence"])
        module = _SpladeEmbedding(model[0], model[1], input_names).eval()
        with torch.no_grad():
            dim = int(module(*(example[n] for n in input_names)).shape[1])
        export_token_model(module, example, staging / "text.onnx", input_names, OUTPUT)
    manifest = Manifest(
        name=name,
        library="sparse_encoder",
        task=SPARSE_TASK,
        towers={
            "text": token_tower(
                "text.onnx", input_names, OUTPUT, dim, options.max_batch, max_length
            )
        },
        tokenizer=tokenizer,
        prompts=prompts,
        build={
            "source": source,
            "modules": [type(module).__name__ for module in model],
            "pooling": "splade",
            "splade": {
                "pooling_strategy": model[1].pooling_strategy,
                "activation_function": model[1].activation_function,
            },
        },
    )

    def check(staged: Model, strict: bool) -> dict[str, dict]:
        return {"text": verify_sparse(staged, model, strict)}

    with progress.stage("Verifying ONNX Runtime against SparseEncoder.encode"):
        staged = load_staged(staging, manifest)
        try:
            verification = check(staged, True)
        finally:
            staged.close()
    progress.report(verification["text"])
    manifest = replace(manifest, build={**manifest.build, "verification": verification})
    return verify_precisions(staging, manifest, check, progress)


def verify_sparse(staged: Model, reference, strict: bool, texts: list[str] = VERIFICATION_TEXTS):
    """Token ids equal the source tokenizer's; each text's non-zero indices equal
    SparseEncoder.encode's (but for values that round to zero on one side only) and its values
    are within MAX_RELATIVE_ERROR of the reference's."""
    assert staged.text is not None
    tokenizer = staged.text.tokenizer
    ours = tokenizer.batch(tokenizer.token_ids(texts), ["input_ids"])["input_ids"]
    labels = [repr(text[:60]) for text in texts]
    check_token_ids(ours, reference.preprocess(texts)["input_ids"].numpy(), labels)
    served = staged.text.embed(staged.text.rows(texts, TextOptions()))
    expected = reference.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    expected = expected.cpu().numpy().astype(np.float32)
    row_max = np.maximum(np.abs(expected).max(axis=1, keepdims=True), 1e-12)
    floor = ZERO_ROUNDING * row_max
    error = np.abs(served - expected)
    mismatched = ((served != 0) != (expected != 0)) & (np.maximum(served, expected) > floor)
    # Error over what the bound allows (at most 1 passes); relative error where values matter.
    excess = error / (MAX_RELATIVE_ERROR * np.abs(expected) + floor)
    large = np.abs(expected) >= 0.01 * row_max
    relative = np.where(large, error / np.maximum(np.abs(expected), floor), 0.0)
    worst = int(excess.max(axis=1).argmax())
    figures = {
        "items": len(texts),
        "min_cosine": float(cosine_rows(served, expected).min()),
        "max_abs_error": float(error.max()),
        "max_relative_error": float(relative.max()),
        "index_mismatches": int(mismatched.sum()),
        "threshold": MAX_RELATIVE_ERROR,
    }
    if strict and mismatched.any():
        row = int(mismatched.any(axis=1).argmax())
        raise BuildError(
            f"the exported sparse tower's non-zero indices differ from SparseEncoder.encode's on "
            f"{labels[row]} ({int(mismatched[row].sum())} indices)"
        )
    if strict and excess.max() > 1:
        raise BuildError(
            f"the exported sparse tower's values differ from SparseEncoder.encode's by more than "
            f"{MAX_RELATIVE_ERROR} (relative, floored at {ZERO_ROUNDING} of the row's largest) "
            f"on {labels[worst]}: max abs error {error.max():.2e}"
        )
    return figures
