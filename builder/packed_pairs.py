"""The packed variant of a cross-encoder's (or text classifier's) pair graph: several pairs per row.

Inputs are the padded graph's token inputs without the attention mask (`input_ids`, and
`token_type_ids` where the model takes them: each pair keeps its own per token) plus
`segment_ids` [rows, length], numbering the execution's pairs (or single texts) 1, 2, ... and 0
for the unused tail of a row. Inside the graph a token attends only to its own pair, position
ids restart at each pair, and the classification head reads each pair's first token. The output
is one row of logits per pair, [pairs, labels], in segment order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from builder.onnx_export import export_onnx
from builder.packed import (
    position_offset,
    segment_attention,
    transformer_unpackable,
    verification_mixes,
)
from builder.verify import check_max_abs
from runtime.batching.packing import SEGMENT_IDS, TOKEN_TYPE_IDS
from runtime.repository.manifest import PackedSpec, TensorSpec

PACKED_FILE = "pair.packed.onnx"
OUTPUT = "scores"

# A head maps each pair's first-token hidden state [pairs, width] to its logits [pairs, labels].
Head = Callable[[torch.Tensor], torch.Tensor]


def classification_head(classifier: torch.nn.Module) -> Head | str:
    """The model's head over first-token states, or why it has none that packs. BERT-style
    models pool through their encoder's pooler and a linear classifier; RoBERTa-style heads
    (RoBERTa, XLM-RoBERTa, ELECTRA) read the first token of the sequence they are given."""
    head = getattr(classifier, "classifier", None)
    pooler = getattr(classifier.base_model, "pooler", None)
    if pooler is not None and isinstance(head, torch.nn.Linear):
        return lambda first: head(pooler(first[:, None]))
    if head is not None and type(head).__name__.endswith("ClassificationHead"):
        return lambda first: head(first[:, None])
    return f"its classification head ({type(classifier).__name__}) has no packed form"


def unpackable(model: CrossEncoder) -> str | None:
    """Why the cross-encoder cannot run packed (None when it can try: verification decides)."""
    if len(model) != 1:
        return "it has modules after its transformer"
    classifier = model.model
    why = transformer_unpackable(classifier.base_model)
    if why is None and isinstance(head := classification_head(classifier), str):
        return head
    return why


class PackedPairLogits(torch.nn.Module):
    """The sequence classifier over packed rows (see the module docstring)."""

    def __init__(self, model: CrossEncoder, input_names: list[str]) -> None:
        super().__init__()
        self.classifier = model.model
        self.encoder = self.classifier.base_model
        self.head = classification_head(self.classifier)
        self.input_names = input_names
        self.position_offset = position_offset(self.encoder)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.input_names, tensors, strict=True))
        segment_ids = inputs.pop(SEGMENT_IDS)
        mask, positions = segment_attention(segment_ids, self.encoder.dtype)
        inputs.update(attention_mask=mask, position_ids=positions + self.position_offset)
        hidden = self.encoder(**inputs, return_dict=True).last_hidden_state
        first = hidden.reshape(-1, hidden.shape[-1])[first_tokens(segment_ids, positions)]
        return self.head(first)


def first_tokens(segment_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The flat index of each segment's first token, [segments] in segment order: a gather
    index, so each pair's state is read as it is, never summed."""
    flat = segment_ids.reshape(-1)
    starts = (positions.reshape(-1) == 0) & (flat > 0)
    index = torch.arange(flat.shape[0], device=flat.device) * starts
    slots = torch.arange(flat.max() + 1, device=flat.device) * 0  # slot 0: row tails
    return slots.scatter_add(0, flat, index)[1:]


def packed_inputs(padded_inputs: list[str]) -> list[str]:
    """The packed graph's inputs: the padded graph's token inputs, the mask replaced by
    segment ids."""
    kept = [name for name in padded_inputs if name in ("input_ids", TOKEN_TYPE_IDS)]
    return [*kept, SEGMENT_IDS]


def export_packed(
    model: CrossEncoder, path: Path, padded_inputs: list[str], labels: int
) -> PackedSpec:
    """Export the packed graph to `path`, traced on two rows holding four pairs."""
    names = packed_inputs(padded_inputs)
    vocabulary = model.model.config.vocab_size
    example = {
        "input_ids": torch.tensor(
            [[101, 2000, 102, 101, 2001, 102, 2002, 102], [101, 2003, 102, 2004, 102, 101, 102, 0]]
        )
        % vocabulary,
        TOKEN_TYPE_IDS: torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0]]),
        SEGMENT_IDS: torch.tensor([[1, 1, 1, 2, 2, 2, 2, 2], [3, 3, 3, 3, 3, 4, 4, 0]]),
    }
    axes = {name: {0: "rows", 1: "length"} for name in names}
    axes[OUTPUT] = {0: "pairs"}
    module = PackedPairLogits(model, names)
    export_onnx(module, tuple(example[name] for name in names), path, names, OUTPUT, axes)
    return PackedSpec(
        onnx=path.name,
        inputs=[TensorSpec(name, "int64", ["batch", "sequence"]) for name in names],
        output=TensorSpec(OUTPUT, "float32", ["pairs", labels]),
    )


def verify_packed(
    run: Callable[[list[int]], np.ndarray],
    padded: np.ndarray,
    reference: np.ndarray,
    labels: list[str],
    what: str,
) -> dict:
    """The packed graph's scores (or probabilities) for the verification items laid out in
    several mixes (`run` takes the items' order and returns their outputs in that order) must
    be within the padded check's tolerance of the source library's (`reference`) and of the
    padded graph's (`padded`); figures of all mixes."""
    mixes = verification_mixes(len(reference))
    served = np.empty((len(mixes), *reference.shape), np.float32)
    for which, mix in enumerate(mixes):
        served[which][mix] = run(mix)
    tiled = [np.concatenate([values] * len(mixes)) for values in (reference, padded)]
    packed = np.concatenate(list(served))
    against_source = check_max_abs(packed, tiled[0], f"packed {what}", labels * len(mixes))
    against_padded = check_max_abs(
        packed, tiled[1], f"packed {what} (against the padded graph)", labels * len(mixes)
    )
    return {
        **against_source,
        "padded_max_abs_error": against_padded["max_abs_error"],
        "mixes": len(mixes),
    }
