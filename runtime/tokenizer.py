"""Text to token-id batches with the `tokenizers` library and the settings in the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.manifest import TokenizerSpec


class TextTokenizer:
    def __init__(self, directory: Path, spec: TokenizerSpec, max_length: int | None = None) -> None:
        self.spec = spec
        self.max_length = min(max_length or spec.max_length, spec.max_length)
        self._tokenizer = Tokenizer.from_file(str(directory / spec.file))
        self._tokenizer.enable_truncation(self.max_length, direction=spec.truncation_side)
        self._tokenizer.no_padding()

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to the model's maximum length (special tokens included)."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]

    def batch(self, ids: list[list[int]], names: list[str]) -> dict[str, np.ndarray]:
        """Pad a group of token-id lists to its longest member, as the model's named int64 inputs.

        Padding goes on the side the source tokenizer pads (left for causal models, whose
        last-token pooling needs the last position to be a real token).
        """
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.spec.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            span = (
                slice(width - len(tokens), width)
                if self.spec.padding_side == "left"
                else slice(0, len(tokens))
            )
            input_ids[row, span] = tokens
            attention_mask[row, span] = 1
        arrays = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        return {name: arrays[name] for name in names}
