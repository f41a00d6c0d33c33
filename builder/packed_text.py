"""The packed variant of a sentence-transformers text graph: several texts per row.

Inputs are `input_ids` [rows, length] and `segment_ids` [rows, length]: 0 marks the unused tail
of a row, k the tokens of the execution's k-th text (numbered 1, 2, ... across all rows, in the
order the embeddings come out). Inside the graph, a token attends only to tokens of its own text
(a block-diagonal mask built from the segment ids, so the inputs stay O(tokens)), position ids
restart at each text, and pooling runs per text. The output is one embedding per text, [texts,
dim], texts being the largest segment id.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

from builder.onnx_export import export_onnx
from builder.verify import compare
from runtime.batching.packing import SEGMENT_IDS
from runtime.models import Model
from runtime.repository.manifest import PackedSpec, TensorSpec
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
    transformer = modules[0].auto_model
    if transformer.config.is_encoder_decoder or getattr(transformer.config, "is_decoder", False):
        return "its transformer is not a bidirectional encoder"
    if "position_ids" not in inspect.signature(transformer.forward).parameters:
        return f"{type(transformer).__name__} does not take position ids"
    return None


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
        # RoBERTa-style embeddings number positions from padding_idx + 1.
        padding_idx = getattr(getattr(self.transformer, "embeddings", None), "padding_idx", None)
        self.position_offset = 0 if padding_idx is None else padding_idx + 1

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [rows, length, length]
        length = segment_ids.shape[1]
        earlier = torch.ones(length, length, dtype=torch.bool, device=same.device).tril(-1)
        positions = (same & earlier).sum(-1)  # tokens of the same text before each token
        dtype = self.transformer.dtype
        mask = torch.zeros(same.shape, dtype=dtype).masked_fill(~same, torch.finfo(dtype).min)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": mask[:, None],
            "position_ids": positions + self.position_offset,
        }
        if self.takes_token_types:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        hidden = self.transformer(**inputs, return_dict=True).last_hidden_state
        pooled = torch.cat(self._pool(hidden, segment_ids, positions), dim=-1)
        features = {"sentence_embedding": pooled}
        for module in self.after:
            features = module(features)
        return features["sentence_embedding"]

    def _pool(
        self, hidden: torch.Tensor, segment_ids: torch.Tensor, positions: torch.Tensor
    ) -> list[torch.Tensor]:
        """sentence-transformers' pooling modes, per text. Sums per text are scatter-adds over
        the flattened tokens, never matrix products: OpenVINO runs those in bf16 on a BF16 CPU,
        which would round every hidden state that pooling adds up."""
        width = hidden.shape[-1]
        flat_segments = segment_ids.reshape(-1)
        flat_hidden = hidden.reshape(-1, width)
        flat_positions = positions.reshape(-1, 1).to(hidden.dtype)
        slots = torch.arange(segment_ids.max() + 1, device=hidden.device)  # slot 0: row tails
        texts = slots[1:]

        def per_slot(values: torch.Tensor) -> torch.Tensor:
            """Sums of `values` [tokens, n] per slot: [1 + texts, n]."""
            zeros = torch.zeros_like(slots[:, None], dtype=values.dtype) + torch.zeros_like(
                values[:1]
            )
            index = flat_segments[:, None].expand(-1, values.shape[1])
            return zeros.scatter_add(0, index, values)

        def per_text(values: torch.Tensor) -> torch.Tensor:
            return per_slot(values)[1:]

        slot_counts = per_slot(torch.ones_like(flat_positions))
        counts = slot_counts[1:]
        lengths = slot_counts[flat_segments]  # each token's text length
        vectors = []
        for mode in self.modes:
            if mode == "mean":
                vectors.append(per_text(flat_hidden) / counts.clamp(min=1e-9))
            elif mode == "mean_sqrt_len_tokens":
                vectors.append(per_text(flat_hidden) / counts.clamp(min=1e-9).sqrt())
            elif mode == "cls":
                vectors.append(per_text(flat_hidden * (flat_positions == 0)))
            elif mode == "lasttoken":
                vectors.append(per_text(flat_hidden * (flat_positions == lengths - 1)))
            elif mode == "weightedmean":
                weights = flat_positions + 1
                total = per_text(weights).clamp(min=1e-9)
                vectors.append(per_text(flat_hidden * weights) / total)
            elif mode == "max":
                member = segment_ids[None] == texts[:, None, None]  # [texts, rows, length]
                row = member.any(-1).to(torch.int32).argmax(-1)  # each text's row
                own = segment_ids[row] == texts[:, None]  # [texts, length]
                values = hidden[row].masked_fill(~own[:, :, None], float("-inf"))
                vectors.append(values.max(dim=1).values)
            else:
                raise ValueError(f"pooling mode {mode!r} has no packed form")
        return vectors


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
    packed: Model, padded: np.ndarray, reference: np.ndarray, texts: list[str]
) -> dict:
    """The packed graph on `texts` laid out in several mixes (all together, reversed, halves
    interleaved) must match sentence-transformers (`reference`) and the padded graph
    (`padded`) to MIN_COSINE on every text; figures of the worst mix."""
    order = list(range(len(texts)))
    mixes = [order, order[::-1], order[::2] + order[1::2]]
    served = np.empty((len(mixes), *reference.shape), np.float32)
    labels = [repr(text[:60]) for text in texts]
    for which, mix in enumerate(mixes):
        served[which][mix] = embed_texts(packed, [texts[i] for i in mix], RAW)
    stacked = [np.concatenate(list(served)), np.tile(reference, (len(mixes), 1))]
    against_source = compare(*stacked, "packed text tower", labels * len(mixes))
    stacked[1] = np.tile(padded, (len(mixes), 1))
    against_padded = compare(
        *stacked, "packed text tower (against the padded graph)", labels * len(mixes)
    )
    return {
        **against_source,
        "padded_min_cosine": against_padded["min_cosine"],
        "padded_max_abs_error": against_padded["max_abs_error"],
        "mixes": len(mixes),
    }
