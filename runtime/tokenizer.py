"""Text to token-id batches with the `tokenizers` library and the settings in the manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.manifest import TokenizerSpec
from runtime.text_cleaning import CLEANERS

# The first part of a long text tried: max_length times this many characters. Typical text has
# 3 to 6 characters per token; a part that turns out too short is widened, never trusted.
CHARS_PER_TOKEN = 8


class TextTokenizer:
    def __init__(self, directory: Path, spec: TokenizerSpec) -> None:
        self.spec = spec
        self._clean = CLEANERS[spec.clean] if spec.clean else None
        self._tokenizer = Tokenizer.from_file(str(directory / spec.file))
        self._tokenizer.enable_truncation(spec.max_length, direction=spec.truncation_side)
        self._tokenizer.no_padding()
        # The same tokenizer without truncation, to see where a part's tokens come from.
        self._counter = Tokenizer.from_str(self._tokenizer.to_str())
        self._counter.no_truncation()

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to the model's maximum length (special tokens included)."""
        texts = readable_parts(
            self._counter, texts, self.spec.max_length, self.spec.truncation_side, self._clean
        )
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


def readable_parts(
    counter: Tokenizer,
    texts: list[str],
    max_length: int,
    side: str,
    clean: Callable[[str], str] | None = None,
) -> list[str]:
    """Each text cut to a part that yields the same tokens the model reads (the first
    `max_length`, or the last for `side` "left"), so the cost of tokenizing follows what the
    model uses, not what the client sends.

    A part is kept only when its tokens show that the tokens read come from whole words before
    the cut (tokenizers split text into words first and tokenize each word alone), with a word
    to spare: otherwise it is widened, up to the whole text. `counter` must not truncate.
    """
    window = max_length * CHARS_PER_TOKEN
    parts = list(texts)
    pending = [index for index, text in enumerate(texts) if len(text) > window]
    while pending:
        pieces = [texts[i][:window] if side == "right" else texts[i][-window:] for i in pending]
        cleaned = [clean(piece) for piece in pieces] if clean else pieces
        encodings = counter.encode_batch(cleaned, add_special_tokens=False)
        widen = []
        for index, piece, encoding in zip(pending, pieces, encodings, strict=True):
            if _holds(encoding.word_ids, max_length, side):
                parts[index] = piece
            else:
                widen.append(index)
        window *= 4
        pending = [index for index in widen if len(texts[index]) > window]
    return parts


def _holds(word_ids: list[int | None], max_length: int, side: str) -> bool:
    """Whether the read tokens' words lie at least one whole word away from the cut."""
    if len(word_ids) <= max_length:
        return False
    if side == "right":
        read, cut = word_ids[max_length - 1], word_ids[-1]
    else:
        cut, read = word_ids[0], word_ids[-max_length]
    return read is not None and cut is not None and abs(cut - read) > 1
