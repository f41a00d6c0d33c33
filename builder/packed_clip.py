"""The packed variant of an OpenCLIP text tower: several texts per row.

OpenCLIP's own text transformer attends causally (each token sees the tokens before it) and
pools one token per text: the end-of-text token (the highest token id, `argmax`), the
tokenizer's end-of-sequence id (`eos`) or the first token. Its padded graph runs every text at
the full context length; packed, the inputs are `input_ids` and `segment_ids` as for
sentence-transformers text graphs (builder.packed_text), the mask is block-diagonal and causal,
position embeddings restart at each text, and each text's pooled token is read from its own
segment. The output is one embedding per text, [texts, dim], in segment order.

A Hugging Face text tower (CustomTextCLIP's HFTextEncoder) packs as sentence-transformers
models do: a bidirectional encoder with a block-diagonal mask, its mean or first-token pooler
per text, then its projection.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder, MeanPooler
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import ResidualAttentionBlock, TextTransformer

from builder.onnx_export import export_onnx
from builder.packed import (
    packed_hidden_states,
    pool_segments,
    position_offset,
    segment_attention,
    transformer_unpackable,
)
from builder.packed_text import OUTPUT, PACKED_INPUTS
from runtime.repository.manifest import PackedSpec, TensorSpec

POOLS = ("argmax", "eos", "first")


def _text(model: torch.nn.Module) -> torch.nn.Module | str:
    """The module holding the text transformer's parts (token and position embeddings,
    transformer, final norm, projection, causal mask), or why there is none that packs."""
    if isinstance(model, CLIP):
        return model  # classic CLIP keeps its text parts on the model itself
    if isinstance(model, CustomTextCLIP) and isinstance(model.text, TextTransformer):
        return model.text
    return f"its text tower is {type(getattr(model, 'text', model)).__name__}"


def _pool_type(text: torch.nn.Module) -> str:
    return getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")


def _eos_id(text: torch.nn.Module) -> int | None:
    if hasattr(text, "text_eos_id"):
        return text.text_eos_id
    return getattr(text, "eos_id", None)


def _hf_text(model: torch.nn.Module) -> HFTextEncoder | None:
    text = getattr(model, "text", None)
    return text if isinstance(text, HFTextEncoder) else None


def unpackable(model: torch.nn.Module) -> str | None:
    """Why the model's text tower cannot run packed (None when it can try)."""
    hf_text = _hf_text(model)
    if hf_text is not None:
        if _hf_pooling(hf_text) is None:
            return f"its text pooler ({type(hf_text.pooler).__name__}) has no packed form"
        return transformer_unpackable(hf_text.transformer)
    text = _text(model)
    if isinstance(text, str):
        return text
    if getattr(text, "cls_emb", None) is not None:
        return "its text transformer appends a class token (CoCa) after the padding"
    for block in text.transformer.resblocks:
        attention = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or attention.in_proj_weight is None:
            return f"its text transformer's blocks ({type(block).__name__}) have no packed form"
    if not text.transformer.batch_first:
        return "its text transformer is not batch-first"
    causal = text.attn_mask is not None
    if not causal and not getattr(text, "use_pad_mask", False):
        return "its text transformer attends to the padding (no causal or padding mask)"
    pool = _pool_type(text)
    if pool == "last":
        return "it pools the context's last position, which is padding for shorter texts"
    if pool not in POOLS or (pool == "eos" and _eos_id(text) is None):
        return f"its text pooling {pool!r} has no packed form"
    return None


class PackedClipText(torch.nn.Module):
    """OpenCLIP's text tower over packed rows (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.text = _text(model)
        self.causal = self.text.attn_mask is not None
        self.pool = _pool_type(self.text)
        self.eos_id = _eos_id(self.text)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        text = self.text
        dtype = text.transformer.get_cast_dtype()
        mask, positions = segment_attention(segment_ids, dtype, causal=self.causal)
        x = text.token_embedding(input_ids).to(dtype) + text.positional_embedding[positions]
        for block in text.transformer.resblocks:
            x = _residual_block(block, x, mask)
        x = text.ln_final(x)
        row, index = self._pooled_tokens(input_ids, segment_ids)
        pooled = x[row, index]
        projection = text.text_projection
        if projection is None:
            return pooled
        return (
            projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
        )

    def _pooled_tokens(
        self, input_ids: torch.Tensor, segment_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text's row and the position there of the token it pools, [texts] each: the
        first token of the text that ranks highest by the pool type's key."""
        texts = torch.arange(1, segment_ids.max() + 1, device=segment_ids.device)
        member = segment_ids[None] == texts[:, None, None]  # [texts, rows, length]
        row = member.any(-1).to(torch.int32).argmax(-1)  # each text's row
        own = segment_ids[row] == texts[:, None]  # [texts, length]
        length = segment_ids.shape[1]
        earliest = length - 1 - torch.arange(length, device=segment_ids.device)  # ties: first
        ids = input_ids[row]
        if self.pool == "argmax":
            key = ids * length + earliest
        elif self.pool == "eos":
            key = (ids == self.eos_id).to(ids.dtype) * length + earliest
        else:  # first
            key = earliest.expand_as(ids)
        return row, key.masked_fill(~own, -1).argmax(-1)


def _hf_pooling(text: HFTextEncoder) -> str | None:
    """The pooling mode (builder.packed.pool_segments) of a Hugging Face text tower's pooler:
    a masked mean, or the first token's last hidden state."""
    pooler = text.pooler
    if isinstance(pooler, MeanPooler):
        return "mean"
    first_token = isinstance(pooler, ClsLastHiddenStatePooler) or (
        isinstance(pooler, ClsPooler) and not pooler.use_pooler_output
    )
    return "cls" if first_token and pooler.cls_token_position == 0 else None


class PackedHFClipText(torch.nn.Module):
    """A Hugging Face CLIP text tower over packed rows (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        text = _hf_text(model)
        self.transformer = text.transformer
        self.projection = text.proj
        self.mode = _hf_pooling(text)
        self.position_offset = position_offset(self.transformer)
        parameters = inspect.signature(self.transformer.forward).parameters
        self.takes_token_types = "token_type_ids" in parameters

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        hidden, positions = packed_hidden_states(
            self.transformer, input_ids, segment_ids, self.position_offset, self.takes_token_types
        )
        [pooled] = pool_segments(hidden, segment_ids, positions, (self.mode,))
        return self.projection(pooled)


def _residual_block(
    block: ResidualAttentionBlock, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock on [rows, length, width] with an additive mask
    [rows, 1, length, length]: its own weights, with the attention written out, since
    nn.MultiheadAttention traces with the example's row length fixed in its reshapes."""
    attention = block.attn
    heads = attention.num_heads
    query, key, value = F.linear(
        block.ln_1(x), attention.in_proj_weight, attention.in_proj_bias
    ).chunk(3, dim=-1)

    def per_head(t: torch.Tensor) -> torch.Tensor:  # [rows, heads, length, head width]
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    query, key, value = per_head(query), per_head(key), per_head(value)
    scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5 + mask
    mixed = (scores.softmax(-1) @ value).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(attention.out_proj(mixed))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def export_packed(model: torch.nn.Module, path: Path, dim: int) -> PackedSpec:
    """Export the packed graph to `path`, traced on two rows holding four texts."""
    if _hf_text(model) is not None:
        module = PackedHFClipText(model)
        vocabulary = module.transformer.config.vocab_size
    else:
        module = PackedClipText(model)
        vocabulary = module.text.token_embedding.num_embeddings
    start, end = vocabulary - 2, vocabulary - 1  # CLIP's start and end of text
    example_ids = torch.tensor(
        [[start, 320, 1125, end, start, 500, end, 0], [start, 320, 1125, 530, end, start, end, 0]]
    )
    example_segments = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 0], [3, 3, 3, 3, 3, 4, 4, 0]])
    axes = {name: {0: "rows", 1: "length"} for name in PACKED_INPUTS}
    axes[OUTPUT] = {0: "texts"}
    export_onnx(
        module,
        (example_ids % vocabulary, example_segments),
        path,
        list(PACKED_INPUTS),
        OUTPUT,
        axes,
    )
    return PackedSpec(
        onnx=path.name,
        inputs=[TensorSpec(name, "int64", ["batch", "sequence"]) for name in PACKED_INPUTS],
        output=TensorSpec(OUTPUT, "float32", ["texts", dim]),
    )
