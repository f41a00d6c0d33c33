"""What every packed graph shares: the attention mask and positions built from segment ids
inside the graph, the transformers that can take them, the orders verification packs items in,
and adding a verified packed graph to a tower (or saying why the tower stays padded)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from builder.progress import Progress
from runtime.repository.manifest import Manifest, PackedSpec


def transformer_unpackable(transformer: torch.nn.Module) -> str | None:
    """Why a Hugging Face transformer cannot run packed rows (None when it can try)."""
    if transformer.config.is_encoder_decoder or getattr(transformer.config, "is_decoder", False):
        return "its transformer is not a bidirectional encoder"
    if "position_ids" not in inspect.signature(transformer.forward).parameters:
        return f"{type(transformer).__name__} does not take position ids"
    return None


def position_offset(transformer: torch.nn.Module) -> int:
    """The first position id: RoBERTa-style embeddings number positions from padding_idx + 1."""
    padding_idx = getattr(getattr(transformer, "embeddings", None), "padding_idx", None)
    return 0 if padding_idx is None else padding_idx + 1


def packed_hidden_states(
    transformer: torch.nn.Module,
    input_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    position_offset: int,
    takes_token_types: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Hugging Face encoder's last hidden states over packed rows (each text attending only
    to itself, positions restarting per text), and those positions."""
    mask, positions = segment_attention(segment_ids, transformer.dtype)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": positions + position_offset,
    }
    if takes_token_types:  # explicit: the model's buffered zeros stop at its maximum
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    return transformer(**inputs, return_dict=True).last_hidden_state, positions


def segment_attention(
    segment_ids: torch.Tensor, dtype: torch.dtype, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive attention mask [rows, 1, length, length] that lets a token see only the
    tokens of its own segment (with `causal`, only those up to itself), and each token's
    position within its segment [rows, length]."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [rows, length, length]
    length = segment_ids.shape[1]
    earlier = torch.ones(length, length, dtype=torch.bool, device=same.device).tril(-1)
    positions = (same & earlier).sum(-1)  # tokens of the same segment before each token
    seen = same & ~earlier.T if causal else same  # causal: keys up to the query
    mask = torch.zeros(same.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
    return mask[:, None], positions


def pool_segments(
    hidden: torch.Tensor,
    segment_ids: torch.Tensor,
    positions: torch.Tensor,
    modes: tuple[str, ...],
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
        zeros = torch.zeros_like(slots[:, None], dtype=values.dtype) + torch.zeros_like(values[:1])
        index = flat_segments[:, None].expand(-1, values.shape[1])
        return zeros.scatter_add(0, index, values)

    def per_text(values: torch.Tensor) -> torch.Tensor:
        return per_slot(values)[1:]

    slot_counts = per_slot(torch.ones_like(flat_positions))
    counts = slot_counts[1:]
    lengths = slot_counts[flat_segments]  # each token's text length
    vectors = []
    for mode in modes:
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


def verification_mixes(count: int) -> list[list[int]]:
    """Orders of `count` verification items to pack together: as given, reversed, and the even
    items before the odd ones, so every item shares rows with different neighbours."""
    order = list(range(count))
    return [order, order[::-1], order[::2] + order[1::2]]


def add_packed(
    manifest: Manifest,
    key: str,
    path: Path,
    why: str | None,
    export: Callable[[], PackedSpec],
    verify: Callable[[Manifest], dict],
    progress: Progress,
) -> Manifest:
    """`manifest` with tower `key`'s packed graph, exported to `path` by `export` and checked by
    `verify` (given the manifest with it; figures, or an error); or, where `why` says the model
    cannot pack or either step fails, without it, saying why in build["packing"]."""
    tower = manifest.towers[key]
    if why is None:
        try:
            with progress.stage(f"Exporting the packed {key} tower (several inputs per row)"):
                packed = export()
            with progress.stage(f"Verifying the packed {key} tower"):
                figures = verify(_with_tower(manifest, key, replace(tower, packed=packed)))
            progress.report(figures)
            packed = replace(packed, figures=figures)
            return _with_tower(manifest, key, replace(tower, packed=packed))
        except Exception as error:  # any failure keeps the padded graph, which passed
            why = f"its packed graph failed: {error}"
    path.unlink(missing_ok=True)
    progress.say(f"    {key} tower: padded graph only, not packed: {why}")
    return replace(manifest, build={**manifest.build, "packing": why})


def _with_tower(manifest: Manifest, key: str, tower) -> Manifest:
    return replace(manifest, towers={**manifest.towers, key: tower})
