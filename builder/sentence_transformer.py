"""sentence-transformers models -> `text.onnx` + `tokenizer.json` + manifest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Transformer

from builder.errors import BuildError
from builder.onnx_export import OPSET, export_onnx
from builder.options import BuildOptions
from builder.progress import Progress
from builder.verify import load_staged, verify_precisions, verify_text_tower
from runtime.manifest import Manifest, TensorSpec, TokenizerSpec, TowerSpec
from runtime.models import Model

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


def build(
    source: str, name: str, staging: Path, options: BuildOptions, progress: Progress
) -> Manifest:
    if options.labels is not None:
        raise BuildError("--labels is for timm classifiers and CLIP zero-shot models")
    max_batch, max_seq_len = options.max_batch, options.max_seq_len
    model = load(source, progress)
    transformer = model[0]
    if not isinstance(transformer, Transformer) or transformer.tokenizer is None:
        raise BuildError(f"{source!r} does not start with a Hugging Face transformer and tokenizer")
    hf_tokenizer = transformer.tokenizer
    if not hf_tokenizer.is_fast:
        raise BuildError(f"{source!r} has no fast (tokenizers) tokenizer to serve it with")
    input_names = [n for n in hf_tokenizer.model_input_names if n in TEXT_INPUTS]
    if "input_ids" not in input_names:
        raise BuildError(f"{source!r} takes inputs {hf_tokenizer.model_input_names}, not input_ids")

    model_max = model.max_seq_length
    if model_max is None and max_seq_len is None:
        raise BuildError(f"{source!r} does not say its maximum sequence length; pass --max-seq-len")
    max_length = min(max_seq_len or model_max, model_max or max_seq_len)

    with progress.stage("Writing tokenizer.json"):
        hf_tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
        tokenizer = TokenizerSpec(
            file="tokenizer.json",
            max_length=max_length,
            truncation_side=hf_tokenizer.truncation_side,
            padding_side=hf_tokenizer.padding_side,
            pad_id=hf_tokenizer.pad_token_id or 0,
            pad_token=hf_tokenizer.pad_token or "[PAD]",
        )

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

    def check(staged: Model, strict: bool) -> dict[str, dict]:
        text = verify_text_tower(
            staged,
            reference_ids=lambda texts: model.preprocess(texts)["input_ids"].numpy(),
            reference_embed=lambda texts: model.encode(texts, convert_to_numpy=True),
            strict=strict,
        )
        return {"text": text}

    with progress.stage("Verifying ONNX Runtime against sentence-transformers"):
        verification = check(load_staged(staging, manifest), True)
    progress.report(verification["text"])
    manifest = replace(manifest, build={**manifest.build, "verification": verification})
    return verify_precisions(staging, manifest, check, progress)
