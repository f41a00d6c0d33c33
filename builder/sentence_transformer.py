"""sentence-transformers models -> `text.onnx` + `tokenizer.json` + manifest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Transformer

from builder.errors import BuildError
from builder.onnx_export import OPSET, export_onnx
from builder.options import BuildOptions
from builder.progress import Progress
from builder.verify import load_staged, verify_text_tower
from runtime.manifest import Manifest, TensorSpec, TokenizerSpec, TowerSpec

# Inputs the runtime's tokenizer can produce; a model needing others cannot be served.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "embedding"


class _SentenceEmbedding(torch.nn.Module):
    """The whole sentence-transformers pipeline (transformer, pooling, Dense, Normalize) as one
    module with positional tensor inputs, which is what the ONNX exporter traces."""

    def __init__(self, model: SentenceTransformer, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors, strict=True))
        return self.model(features)["sentence_embedding"]


def load(source: str, progress: Progress) -> SentenceTransformer:
    with progress.stage(f"Loading {source} with sentence-transformers"):
        try:
            return SentenceTransformer(source, device="cpu")
        except Exception as error:
            raise BuildError(
                f"cannot load {source!r} with sentence-transformers: {error}. SOURCE must be a "
                "local sentence-transformers directory, or a Hugging Face model id with the Hub "
                "reachable"
            ) from error


def text_inputs(source: str, model: torch.nn.Module) -> tuple[Any, list[str]]:
    """The fast Hugging Face tokenizer of a sentence-transformers (or CrossEncoder) model whose
    first module is a transformer, and the model inputs the runtime's tokenizers can produce."""
    transformer = model[0]
    if not isinstance(transformer, Transformer) or transformer.tokenizer is None:
        raise BuildError(f"{source!r} does not start with a Hugging Face transformer and tokenizer")
    hf_tokenizer = transformer.tokenizer
    if not hf_tokenizer.is_fast:
        raise BuildError(f"{source!r} has no fast (tokenizers) tokenizer to serve it with")
    input_names = [n for n in hf_tokenizer.model_input_names if n in TEXT_INPUTS]
    if "input_ids" not in input_names:
        raise BuildError(f"{source!r} takes inputs {hf_tokenizer.model_input_names}, not input_ids")
    return hf_tokenizer, input_names


def max_length_of(source: str, model_max: int | None, requested: int | None) -> int:
    """--max-seq-len, capped at the model's own maximum."""
    if model_max is None and requested is None:
        raise BuildError(f"{source!r} does not say its maximum sequence length; pass --max-seq-len")
    return min(requested or model_max, model_max or requested)


def write_tokenizer(staging: Path, hf_tokenizer: Any, max_length: int) -> TokenizerSpec:
    hf_tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
    return TokenizerSpec(
        file="tokenizer.json",
        max_length=max_length,
        truncation_side=hf_tokenizer.truncation_side,
        padding_side=hf_tokenizer.padding_side,
        pad_id=hf_tokenizer.pad_token_id or 0,
        pad_token=hf_tokenizer.pad_token or "[PAD]",
    )


def build(
    source: str, name: str, staging: Path, options: BuildOptions, progress: Progress
) -> Manifest:
    if options.labels is not None:
        raise BuildError("--labels is for timm classifiers and CLIP zero-shot models")
    max_batch, max_seq_len = options.max_batch, options.max_seq_len
    model = load(source, progress)
    hf_tokenizer, input_names = text_inputs(source, model)
    max_length = max_length_of(source, model.max_seq_length, max_seq_len)
    with progress.stage("Writing tokenizer.json"):
        tokenizer = write_tokenizer(staging, hf_tokenizer, max_length)

    with progress.stage(f"Exporting the text tower to ONNX (opset {OPSET})"):
        example = model.preprocess(["a short example", "and a somewhat longer example sentence"])
        dynamic = {name: {0: "batch", 1: "sequence"} for name in input_names}
        export_onnx(
            _SentenceEmbedding(model, input_names),
            tuple(example[name] for name in input_names),
            staging / "text.onnx",
            input_names,
            OUTPUT,
            dynamic | {OUTPUT: {0: "batch"}},
        )

    # sentence-transformers 6 renamed the method; older releases only have the long name.
    dim = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()
    manifest = Manifest(
        name=name,
        library="sentence_transformers",
        task="embedding",
        towers={
            "text": TowerSpec(
                onnx="text.onnx",
                inputs=[TensorSpec(n, "int64", ["batch", "sequence"]) for n in input_names],
                output=TensorSpec(OUTPUT, "float32", ["batch", dim]),
                dim=dim,
                max_batch=max_batch,
                max_seq_len=max_length,
            )
        },
        tokenizer=tokenizer,
        build={"source": source, "modules": [type(module).__name__ for module in model]},
    )
    with progress.stage("Verifying ONNX Runtime against sentence-transformers"):
        report = verify_text_tower(
            load_staged(staging, manifest),
            reference_ids=lambda texts: model.preprocess(texts)["input_ids"].numpy(),
            reference_embed=lambda texts: model.encode(texts, convert_to_numpy=True),
        )
    progress.report(report)
    return replace(manifest, build={**manifest.build, "verification": {"text": report}})
