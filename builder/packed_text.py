"""The packed variant of a sentence-transformers text graph: several texts per row.

Inputs are `input_ids` [rows, length] and `segment_ids` [rows, length]: 0 marks the unused tail
of a row, k the tokens of the execution's k-th text (numbered 1, 2, ... across all rows, in the
order the embeddings come out). Inside the graph, a token attends only to tokens of its own text
(a block-diagonal mask built from the segment ids, so the inputs stay O(tokens)), position ids
restart at each text, and pooling runs per text. The output is one embedding per text, [texts,
dim], texts being the largest segment id.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

from builder.onnx_export import export_onnx
from builder.packed import (
    packed_hidden_states,
    pool_segments,
    position_offset,
    transformer_unpackable,
    verification_mixes,
)
from builder.verify import VERIFICATION_TEXTS, compare, load_staged
from runtime.batching.packing import SEGMENT_IDS
from runtime.repository.manifest import Manifest, PackedSpec, TensorSpec
from runtime.tasks.text_embedding import TextEmbeddingOptions, embed_texts

RAW = TextEmbeddingOptions(normalize=False)

PACKED_INPUTS = ("input_ids", SEGMENT_IDS)
PACKED_FILE = "text.packed.onnx"
OUTPUT = "embedding"
# What may follow pooling: modules that map one sentence embedding to another.
AFTER_POOLING = (Dense, Normalize)


def unpackable(model: SentenceTransformer) -> str | None:
    """Why the model cannot run packed (None when it can try: verification decides)."""
    modules = list(model)
    if len(modules) < 2 or not isinstance(modules[0], Transformer):
        return "it does not start with a Hugging Face transformer"
    if not isinstance(modules[1], Pooling):
        return f"its second module is {type(modules[1]).__name__}, not Pooling"
    if not modules[1].include_prompt:
        return "its pooling leaves the prompt out (include_prompt: false)"
    for module in modules[2:]:
        if not isinstance(module, AFTER_POOLING):
            return f"it has a {type(module).__name__} module after pooling"
    return transformer_unpackable(modules[0].auto_model)


class PackedSentenceEmbedding(torch.nn.Module):
    """The sentence-transformers pipeline over packed rows (see the module docstring)."""

    def __init__(self, model: SentenceTransformer, takes_token_types: bool) -> None:
        super().__init__()
        modules = list(model)
        self.transformer = modules[0].auto_model
        pooling: Pooling = modules[1]
        self.modes = (
            (pooling.pooling_mode,)
            if isinstance(pooling.pooling_mode, str)
            else tuple(pooling.pooling_mode)
        )
        self.after = torch.nn.ModuleList(modules[2:])
        self.takes_token_types = takes_token_types
        self.position_offset = position_offset(self.transformer)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        hidden, positions = packed_hidden_states(
            self.transformer, input_ids, segment_ids, self.position_offset, self.takes_token_types
        )
        pooled = torch.cat(pool_segments(hidden, segment_ids, positions, self.modes), dim=-1)
        features = {"sentence_embedding": pooled}
        for module in self.after:
            features = module(features)
        return features["sentence_embedding"]


def export_packed(
    model: SentenceTransformer, path: Path, takes_token_types: bool, dim: int
) -> PackedSpec:
    """Export the packed graph to `path`, traced on two rows holding four texts."""
    example_ids = torch.tensor(
        [[101, 2000, 102, 101, 2001, 2002, 102, 0], [101, 2003, 2004, 2005, 102, 101, 102, 0]]
    )
    example_segments = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 0], [3, 3, 3, 3, 3, 4, 4, 0]])
    vocabulary = model[0].auto_model.config.vocab_size
    example_ids = example_ids % vocabulary
    axes = {name: {0: "rows", 1: "length"} for name in PACKED_INPUTS}
    axes[OUTPUT] = {0: "texts"}
    module = PackedSentenceEmbedding(model, takes_token_types)
    export_onnx(module, (example_ids, example_segments), path, list(PACKED_INPUTS), OUTPUT, axes)
    return PackedSpec(
        onnx=path.name,
        inputs=[TensorSpec(name, "int64", ["batch", "sequence"]) for name in PACKED_INPUTS],
        output=TensorSpec(OUTPUT, "float32", ["texts", dim]),
    )


def verify_packed(
    staging: Path,
    manifest: Manifest,
    trial: Manifest,
    reference: Callable[[list[str]], np.ndarray],
    texts: list[str] = VERIFICATION_TEXTS,
) -> dict:
    """The text tower of `trial` (`manifest` with its packed graph) on `texts` laid out in
    several mixes (all together, reversed, halves interleaved) must match the source library
    (`reference`) and the padded graph of `manifest` to MIN_COSINE on every text; figures of
    all mixes."""
    padded, packed = load_staged(staging, manifest), load_staged(staging, trial)
    try:
        assert (
            packed.text is not None
            and packed.text.tower.spec.onnx == trial.towers["text"].packed.onnx
        ), "the staged model does not serve its packed graph"
        mixes = verification_mixes(len(texts))
        served = np.empty((len(mixes), len(texts), packed.text.tower.spec.dim), np.float32)
        for which, mix in enumerate(mixes):
            served[which][mix] = embed_texts(packed, [texts[i] for i in mix], RAW)
        expected = [reference(texts), embed_texts(padded, texts, RAW)]
    finally:
        padded.close()
        packed.close()
    labels = [repr(text[:60]) for text in texts] * len(mixes)
    stacked = np.concatenate(list(served))
    what = "packed text tower"
    against_source = compare(stacked, np.tile(expected[0], (len(mixes), 1)), what, labels)
    what += " (against the padded graph)"
    against_padded = compare(stacked, np.tile(expected[1], (len(mixes), 1)), what, labels)
    return {
        **against_source,
        "padded_min_cosine": against_padded["min_cosine"],
        "padded_max_abs_error": against_padded["max_abs_error"],
        "mixes": len(mixes),
    }
