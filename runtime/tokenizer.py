"""Text to token-id batches with the `tokenizers` library and the settings in the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.manifest import TokenizerSpec
from runtime.text_cleaning import CLEANERS


class TextTokenizer:
    def __init__(self, directory: Path, spec: TokenizerSpec) -> None:
        self.spec = spec
        self._clean = CLEANERS[spec.clean] if spec.clean else None
        self._tokenizer = Tokenizer.from_file(str(directory / spec.file))
        self._tokenizer.enable_truncation(spec.max_length, direction=spec.truncation_side)
        self._tokenizer.no_padding()

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to the model's maximum length (special tokens included)."""
        if self._clean is not None:
            texts = [self._clean(text) for text in texts]
        ids = [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]
        if self.spec.strip_token_id is not None:
            ids = [[0 if i == self.spec.strip_token_id else i for i in row] for row in ids]
        return ids

    def batch(self, ids: list[list[int]], names: list[str]) -> dict[str, np.ndarray]:
        """Pad a group of token-id lists to its longest member (or to the model's fixed length),
        as the model's named int64 inputs.

        Padding goes on the side the source tokenizer pads (left for causal models, whose
        last-token pooling needs the last position to be a real token).
        """
        width = self.spec.max_length if self.spec.pad_to_max_length else max(map(len, ids))
        input_ids = np.full((len(ids), width), self.spec.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            left = self.spec.padding_side == "left"
            span = slice(width - len(tokens), width) if left else slice(0, len(tokens))
            input_ids[row, span] = tokens
            attention_mask[row, span] = 1
        arrays = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        return {name: arrays[name] for name in names}
