"""Token packing for text towers with a packed graph: several texts per row, no padding between.

An execution's texts are packed first-fit-decreasing by token count into rows of one length
(the row capacity), chosen per execution among a few multiples of its longest text for the least
estimated cost; the packed graph (builder.packed_text) keeps texts apart with a segment id per
token. `split` cuts a batch into executions by real tokens, `pack` lays one execution out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SEGMENT_IDS = "segment_ids"
TOKEN_TYPE_IDS = "token_type_ids"
# Rows grow to at most this many tokens (or the longest text, where that is longer): attention
# costs grow with the row, so past this, longer rows cost more than the padding they save.
MAX_ROW_TOKENS = 256
# Attention's share of a token's cost grows by about 1 / (6 x hidden size) per token of row;
# this is that reciprocal for a 384-wide model, the smallest commonly served.
ATTENTION_TOKENS = 2304


@dataclass(frozen=True)
class Packing:
    """One execution laid out in rows: `rows[r]` lists the item indices in row r, in order."""

    rows: list[list[int]]
    width: int  # tokens per row (the fullest row)

    @property
    def executed_tokens(self) -> int:
        return len(self.rows) * self.width


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Item indices per row: longest first, each into the first row with room for it."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        row = next((r for r, space in enumerate(room) if space >= length), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= length
    return rows


def _cost(rows: int, width: int) -> float:
    return rows * width * (1 + width / ATTENTION_TOKENS)


def plan(lengths: Sequence[int], max_row_tokens: int = MAX_ROW_TOKENS) -> Packing:
    """The cheapest packing of texts of `lengths` tokens among rows of 1, 2, 4, ... times the
    longest text (up to `max_row_tokens`)."""
    longest = max(lengths)
    best: Packing | None = None
    capacity = longest
    while True:
        rows = first_fit_decreasing(lengths, capacity)
        width = max(sum(lengths[i] for i in row) for row in rows)
        if best is None or _cost(len(rows), width) < _cost(len(best.rows), best.width):
            best = Packing(rows, width)
        if len(rows) == 1 or capacity * 2 > max_row_tokens:
            return best
        capacity *= 2


def pack(
    ids: Sequence[Sequence[int]],
    pad_id: int,
    max_row_tokens: int = MAX_ROW_TOKENS,
    token_types: Sequence[Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Token-id lists as the packed graph's `input_ids` and `segment_ids`: item k's tokens carry
    segment id k + 1, so the graph's k-th output is item k's; 0 marks unused row tails. With
    `token_types` (one per token, as pair encodings have them), also `token_type_ids`."""
    packing = plan([len(tokens) for tokens in ids], max_row_tokens)
    shape = (len(packing.rows), packing.width)
    arrays = {"input_ids": np.full(shape, pad_id, dtype=np.int64)}
    arrays[SEGMENT_IDS] = np.zeros(shape, dtype=np.int64)
    if token_types is not None:
        arrays[TOKEN_TYPE_IDS] = np.zeros(shape, dtype=np.int64)
    for row, members in enumerate(packing.rows):
        start = 0
        for index in members:
            span = slice(start, start + len(ids[index]))
            arrays["input_ids"][row, span] = ids[index]
            arrays[SEGMENT_IDS][row, span] = index + 1
            if token_types is not None:
                arrays[TOKEN_TYPE_IDS][row, span] = token_types[index]
            start = span.stop
    return arrays


def bucket_width(width: int) -> int:
    """`width` rounded up to a multiple of a quarter of its highest power of two (9 -> 10,
    17 -> 20, 33 -> 40, 100 -> 112): four widths per doubling, at most 25% more tokens."""
    step = max(1, 2 ** (width.bit_length() - 3))
    return -(-width // step) * step


def to_bucket_width(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Packed inputs with every row's unused tail (segment 0, which no text attends to or pools
    from) extended to its `bucket_width`; other inputs as they are. An engine that builds
    kernels per input shape then meets the same few shapes again: OpenVINO bf16 spent about as
    long building a new shape's kernels as running it."""
    if SEGMENT_IDS not in inputs:
        return inputs
    width = inputs[SEGMENT_IDS].shape[1]
    tail = bucket_width(width) - width
    return {name: np.pad(array, ((0, 0), (0, tail))) for name, array in inputs.items()}


def split(
    batch: list[Any],
    length_of: Callable[[Any], int],
    max_tokens: int,
    max_items: int,
    short_tokens: int = 0,
) -> list[list[Any]]:
    """`batch` sorted longest first and cut into executions of at most `max_tokens` real tokens
    (one text at least) and `max_items` texts each, so that each packs within about the token
    budget and the tower's max batch; past `max_items`, texts still join an execution that
    stays within `short_tokens` real tokens (short texts: more of them per execution)."""
    ordered = sorted(batch, key=length_of, reverse=True)
    executions: list[list[Any]] = []
    tokens = max_tokens
    for item in ordered:
        length = length_of(item)
        full = executions and len(executions[-1]) >= max_items and tokens + length > short_tokens
        if tokens + length > max_tokens or full:
            executions.append([])
            tokens = 0
        executions[-1].append(item)
        tokens += length
    return executions


def split_requests(
    tokens_of: Callable[[Any], int],
    max_tokens: int,
    max_items: int,
    short_tokens: int,
    batch: list[Any],
) -> list[list[Any]]:
    """`split` for a tower's batch of (request, index) entries, `tokens_of` counting the tokens
    of one request item."""
    return split(
        batch,
        lambda entry: tokens_of(entry[0].items[entry[1]]),
        max_tokens,
        max_items,
        short_tokens,
    )


def token_figures(inputs: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(token slots executed, slots holding a real token) of one execution's inputs, from its
    segment ids (packed) or attention mask (padded); None for inputs with neither."""
    occupancy = inputs.get(SEGMENT_IDS, inputs.get("attention_mask"))
    if occupancy is None:
        return None
    return int(occupancy.size), int(np.count_nonzero(occupancy))
