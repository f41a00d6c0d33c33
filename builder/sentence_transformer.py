"""sentence-transformers models -> `text.onnx` + `tokenizer.json` + manifest."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Pooling, Transformer

from builder.errors import BuildError
from builder.onnx_export import OPSET, export_token_model, token_tower
from builder.options import BuildOptions
from builder.packed import add_packed
from builder.packed_text import PACKED_FILE, export_packed, unpackable, verify_packed
from builder.progress import Progress
from builder.token_embeddings import export_token_tower, verify_token_tower
from builder.verify import (
    load_staged,
    verify_precisions,
    verify_prompt,
    verify_text_tower,
)
from runtime.models import Model
from runtime.repository.manifest import Manifest, PromptSpec, TokenizerSpec
from runtime.tasks.text_embedding import TextEmbeddingOptions, embed_texts
from runtime.text import POOLING_MASK

RAW = TextEmbeddingOptions(normalize=False)

# Inputs the runtime's tokenizer can produce; a model needing others cannot be served.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "embedding"


class _SentenceEmbedding(torch.nn.Module):
    """The whole sentence-transformers pipeline (transformer, pooling, Dense, Normalize) as one
    module with positional tensor inputs, which is what the ONNX exporter traces.

    With a `pooling_mask` input (models whose pooling leaves the prompt out), the transformer
    attends with the attention mask and pooling averages over the pooling mask: what
    sentence-transformers does by zeroing the prompt's positions of the mask before pooling,
    but per row, so rows with different prompts can share a batch.
    """

    def __init__(self, model: SentenceTransformer, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors, strict=True))
        pooling_mask = features.pop(POOLING_MASK, None)
        for module in self.model:
            if pooling_mask is not None and isinstance(module, Pooling):
                features["attention_mask"] = pooling_mask
            features = module(features)
        return features["sentence_embedding"]


def apply_prompts(model: SentenceTransformer, options: BuildOptions) -> PromptSpec | None:
    """The model's prompts with --prompt NAME=TEXT over them, and the default prompt name; set
    on `model` too, so verification compares with the prompts that will be served."""
    model.prompts = {**model.prompts, **options.named_prompts()}
    if options.default_prompt_name is not None:
        if options.default_prompt_name not in model.prompts:
            raise BuildError(
                f"--default-prompt-name {options.default_prompt_name!r} is not one of the "
                f"model's prompts ({', '.join(model.prompts) or 'none'}); add it with --prompt"
            )
        model.default_prompt_name = options.default_prompt_name
    prompts = {name: text for name, text in model.prompts.items() if text}
    if not prompts:
        return None
    default = model.default_prompt_name if model.default_prompt_name in prompts else None
    return PromptSpec(prompts, default)


def _excludes_prompt(model: SentenceTransformer) -> bool:
    return any(isinstance(m, Pooling) and not m.include_prompt for m in model)


def _pooling_mode(model: SentenceTransformer) -> str | None:
    """The pooling mode (mean, cls, lasttoken...), which TEI's GET /info reports."""
    for module in model:
        if isinstance(module, Pooling):
            mode = getattr(module, "pooling_mode", None)  # sentence-transformers 6
            return mode if isinstance(mode, str) else module.get_pooling_mode_str()
    return None


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
    prompts = apply_prompts(model, options)
    graph_inputs = [*input_names, POOLING_MASK] if _excludes_prompt(model) else input_names
    max_length = max_length_of(source, model.max_seq_length, max_seq_len)
    with progress.stage("Writing tokenizer.json"):
        tokenizer = write_tokenizer(staging, hf_tokenizer, max_length)

    with progress.stage(f"Exporting the text tower to ONNX (opset {OPSET})"):
        example = model.preprocess(["a short example", "and a somewhat longer example sentence"])
        example[POOLING_MASK] = example["attention_mask"].clone()
        example[POOLING_MASK][:, :2] = 0
        module = _SentenceEmbedding(model, graph_inputs)
        export_token_model(module, example, staging / "text.onnx", graph_inputs, OUTPUT)

    # sentence-transformers 6 renamed the method; older releases only have the long name.
    dim = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()
    towers = {"text": token_tower("text.onnx", graph_inputs, OUTPUT, dim, max_batch, max_length)}
    if options.token_embeddings:
        with progress.stage("Exporting the token-embedding tower to ONNX"):
            side = tokenizer.padding_side
            towers["tokens"] = export_token_tower(
                model, input_names, max_length, max_batch, side, staging
            )
    manifest = Manifest(
        name=name,
        library="sentence_transformers",
        task="embedding",
        towers=towers,
        tokenizer=tokenizer,
        prompts=prompts,
        build={
            "source": source,
            "modules": [type(module).__name__ for module in model],
            "pooling": _pooling_mode(model),
        },
    )

    def check(staged: Model, strict: bool) -> dict[str, dict]:
        text = verify_text_tower(
            staged,
            reference_ids=lambda texts: model.preprocess(texts)["input_ids"].numpy(),
            reference_embed=lambda texts: model.encode(texts, convert_to_numpy=True),
            strict=strict,
        )
        # Prompts are checked in the precision that must pass (bf16 is measured, not judged).
        for name in prompts.prompts if prompts and strict else ():
            text[f"prompt {name}"] = verify_prompt(
                staged,
                name,
                lambda texts, name=name: model.encode(texts, prompt_name=name),
            )
        if staged.tokens is None:
            return {"text": text}
        return {"text": text, "tokens": verify_token_tower(staged, model, strict)}

    with progress.stage("Verifying ONNX Runtime against sentence-transformers"):
        verification = check(load_staged(staging, manifest), True)
    progress.report(verification["text"])
    manifest = replace(manifest, build={**manifest.build, "verification": verification})
    manifest = _with_packed(model, staging, manifest, progress)
    manifest = verify_precisions(staging, manifest, check, progress)
    if options.int8 is not None:
        from builder.int8 import add_int8, embedding_plan

        plan = embedding_plan(
            reference=lambda texts: model.encode(texts, convert_to_numpy=True),
            embed=lambda staged, texts: embed_texts(staged, texts, RAW),
            thresholds=options.int8,
        )
        manifest = add_int8(staging, manifest, "text", plan, progress)
    return manifest


def _with_packed(
    model: SentenceTransformer, staging: Path, manifest: Manifest, progress: Progress
) -> Manifest:
    """`manifest` with the text tower's packed graph, exported and verified against
    sentence-transformers and the padded graph; or without it, saying why, in
    build["packing"]."""
    tower = manifest.towers["text"]
    token_types = any(t.name == "token_type_ids" for t in tower.inputs)
    return add_packed(
        manifest,
        "text",
        staging / PACKED_FILE,
        unpackable(model),
        lambda: export_packed(model, staging / PACKED_FILE, token_types, tower.dim),
        lambda trial: verify_packed(
            staging, manifest, trial, partial(model.encode, convert_to_numpy=True)
        ),
        progress,
    )
