"""Text to token-id batches with the `tokenizers` library and the settings in the manifest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from tokenizers import Tokenizer

from runtime.errors import ModelLoadError
from runtime.preprocessing.text_cleaning import CLEANERS
from runtime.repository.manifest import TokenizerSpec

T = TypeVar("T")

# The first part of a long text tried: max_length times this many characters. Typical text has
# 3 to 6 characters per token; a part that turns out too short is widened, never trusted.
CHARS_PER_TOKEN = 8


def open_tokenizer(
    kind: Callable[[Path, TokenizerSpec], T], directory: Path, spec: TokenizerSpec
) -> T:
    """`kind(directory, spec)`; any failure is a ModelLoadError naming the tokenizer file."""
    try:
        return kind(directory, spec)
    except Exception as error:
        raise ModelLoadError(f"cannot load {directory / spec.file}: {error}") from error


def longest_text(max_length: int) -> str:
    """A text of at least `max_length` tokens in any vocabulary (one word, at least one token,
    per position): what warm-ups use to run a model's longest input."""
    return " ".join(["a"] * max_length)


class TextTokenizer:
    def __init__(self, directory: Path, spec: TokenizerSpec) -> None:
        self.spec = spec
        self._clean = CLEANERS[spec.clean] if spec.clean else None
        self._tokenizer = Tokenizer.from_file(str(directory / spec.file))
        # Truncation happens per request (either side, or not at all), so the shared tokenizer
        # keeps none and no state changes between requests.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._added = self._tokenizer.num_special_tokens_to_add(is_pair=False)
        decoder = self._tokenizer.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, token in decoder.items() if token.special)
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def vocabulary(self) -> list[str]:
        return list(self._tokenizer.get_vocab(with_added_tokens=False))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to the model's maximum length (special tokens included)."""
        return [ids for ids, _ in self.encode(texts, self.spec.truncation_side)]

    def encode(self, texts: list[str], direction: str) -> list[tuple[list[int], int]]:
        """Per text: its ids truncated on `direction` to the maximum length (special tokens
        kept, as the tokenizer's own truncation does), and its token count before truncation:
        exact for a text the model reads whole, a lower bound (past the maximum) for a long
        text, which is cut to the part the model reads before tokenizing (readable_parts)."""
        texts = readable_parts(self._tokenizer, texts, self.spec.max_length, direction, self._clean)
        if self._clean is not None:
            texts = [self._clean(text) for text in texts]
        rows = []
        for text, encoding in zip(texts, self._tokenizer.encode_batch(texts), strict=True):
            ids, count = encoding.ids, len(encoding.ids)
            if count > self.spec.max_length:
                ids = self._truncated(text, direction)
            if self.spec.strip_token_id is not None:
                ids = [0 if i == self.spec.strip_token_id else i for i in ids]
            rows.append((ids, count))
        return rows

    def count(self, text: str) -> int:
        """The tokens of the whole text, special tokens included."""
        if self._clean is not None:
            text = self._clean(text)
        return len(self._tokenizer.encode(text).ids)

    def _truncated(self, text: str, direction: str) -> list[int]:
        """What the tokenizer's own truncation does: cut the text's tokens to leave room for
        the special tokens, then add them."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        encoding.truncate(self.spec.max_length - self._added, direction=direction)
        return self._tokenizer.post_process(encoding).ids

    def truncate_ids(self, ids: list[int], direction: str) -> list[int]:
        """Token ids cut to the maximum length as a text's are: the special tokens the
        tokenizer adds at the ends ([CLS] ... [SEP]) stay, the tokens between them are cut on
        `direction`."""
        limit = self.spec.max_length
        if len(ids) <= limit:
            return ids
        head = 0
        while head < min(self._added, limit) and ids[head] in self.special_ids:
            head += 1
        tail = 0
        while head + tail < min(self._added, limit) and ids[-1 - tail] in self.special_ids:
            tail += 1
        room = limit - head - tail
        body = ids[head : len(ids) - tail]
        kept = body[len(body) - room :] if direction == "left" else body[:room]
        return ids[:head] + kept + ids[len(ids) - tail :]

    def prompt_length(self, prompt: str) -> int:
        """The prompt's tokens as sentence-transformers counts them for pooling: with the
        leading special tokens, without a trailing special token."""
        ids = self._tokenizer.encode(prompt).ids
        return len(ids) - (1 if ids and ids[-1] in self.special_ids else 0)

    def batch(
        self, ids: list[list[int]], names: list[str], skips: Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Pad a group of token-id lists to its longest member (or to the model's fixed length),
        as the model's named int64 inputs.

        Padding goes on the side the source tokenizer pads (left for causal models, whose
        last-token pooling needs the last position to be a real token). `pooling_mask` is the
        attention mask without each row's first `skips` tokens (a prompt that pooling leaves
        out, as sentence-transformers' `include_prompt: false` does).
        """
        width = self.spec.max_length if self.spec.pad_to_max_length else max(map(len, ids))
        input_ids = np.full((len(ids), width), self.spec.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        pooling_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            start = width - len(tokens) if self.spec.padding_side == "left" else 0
            input_ids[row, start : start + len(tokens)] = tokens
            attention_mask[row, start : start + len(tokens)] = 1
            skip = skips[row] if skips else 0
            pooling_mask[row, start + skip : start + len(tokens)] = 1
        arrays = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
            "pooling_mask": pooling_mask,
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
