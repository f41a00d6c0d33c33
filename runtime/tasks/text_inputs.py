"""The pre-processing of every task on a text tower: texts and token-id rows (in any mix, as
TEI's and OpenAI's APIs accept) into the tower's token rows, in input order."""

from __future__ import annotations

from collections.abc import Sequence

from runtime.text import TextEncoder, TextOptions, TokenRow

TextInput = str | list[int]


def token_rows(
    encoder: TextEncoder, inputs: Sequence[TextInput], options: TextOptions
) -> list[TokenRow]:
    """Texts tokenised with the options' prompt and truncation; token ids checked against the
    vocabulary and truncated alike."""
    texts = [(i, item) for i, item in enumerate(inputs) if isinstance(item, str)]
    if len(texts) == len(inputs):
        return encoder.rows(list(inputs), options)  # type: ignore[arg-type]
    ids = [(i, item) for i, item in enumerate(inputs) if not isinstance(item, str)]
    rows: list[TokenRow | None] = [None] * len(inputs)
    for group, encode in ((texts, encoder.rows), (ids, encoder.id_rows)):
        if group:
            encoded = encode([item for _, item in group], options)
            for (i, _), row in zip(group, encoded, strict=True):
                rows[i] = row
    return rows  # type: ignore[return-value]


def tokens_read(rows: list[TokenRow]) -> int:
    """How many tokens the model reads for `rows` (what the OpenAI and Cohere APIs bill)."""
    return sum(len(row.ids) for row in rows)
