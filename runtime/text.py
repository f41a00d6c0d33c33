"""Text requests: prompts, truncation and token-id inputs, into token rows for the text tower.

Prompts follow sentence-transformers exactly: a request's `prompt` (a literal prefix) or
`prompt_name` (one of the model's prompts), else the model's default prompt, is put before each
text before tokenizing; an empty prompt is none. Where the model's pooling leaves the prompt out
(`include_prompt: false`), the tower takes a `pooling_mask` without the prompt's first tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from runtime.batching.packing import pack
from runtime.batching.tower import Tower
from runtime.errors import InputError, UnknownPrompt
from runtime.preprocessing.tokenizer import TextTokenizer, longest_text
from runtime.repository.manifest import PromptSpec

TRUNCATION_SIDES = ("right", "left")
POOLING_MASK = "pooling_mask"


@dataclass(frozen=True)
class TextOptions:
    truncate: bool = True
    # None: the side the source tokenizer truncates (right for almost every model).
    direction: str | None = None
    prompt: str | None = None
    prompt_name: str | None = None


class TokenRow(NamedTuple):
    ids: list[int]
    # Leading tokens that pooling leaves out (the prompt, for include_prompt: false).
    skip: int = 0


class TextTooLong(InputError):
    def __init__(self, index: int, tokens: int, maximum: int) -> None:
        self.index, self.tokens, self.maximum = index, tokens, maximum
        super().__init__(self.describe("text"))

    def describe(self, key: str) -> str:
        return (
            f'"{key}"[{self.index}] has {self.tokens} tokens; this model reads at most '
            f"{self.maximum}. Send a shorter text, or truncate: true to cut it"
        )


class TextEncoder:
    def __init__(self, tower: Tower, tokenizer: TextTokenizer, prompts: PromptSpec | None) -> None:
        self.tower = tower
        self.tokenizer = tokenizer
        self.prompts = prompts or PromptSpec()
        self.masks_prompt = POOLING_MASK in tower.input_names

    @property
    def max_length(self) -> int:
        return self.tokenizer.spec.max_length

    def resolve_prompt(self, options: TextOptions) -> str | None:
        """The prompt sentence-transformers would use for these options."""
        if options.prompt is not None and options.prompt_name is not None:
            raise InputError('send "prompt" or "promptName", not both')
        if options.prompt is not None:
            return options.prompt
        name = options.prompt_name
        if name is None:
            return self.prompts.prompts.get(self.prompts.default) if self.prompts.default else None
        if name not in self.prompts.prompts:
            known = ", ".join(sorted(self.prompts.prompts)) or "none"
            raise UnknownPrompt(
                f"prompt name {name!r:.60} is not one of this model's prompts ({known}); add "
                "prompts with ingrain-build --prompt NAME=TEXT"
            )
        return self.prompts.prompts[name]

    def rows(self, texts: list[str], options: TextOptions) -> list[TokenRow]:
        self.tower.admit(len(texts))
        started = time.perf_counter_ns()
        prompt = self.resolve_prompt(options)
        skip = 0
        if prompt:
            texts = [prompt + text for text in texts]
            skip = self.tokenizer.prompt_length(prompt) if self.masks_prompt else 0
        direction = options.direction or self.tokenizer.spec.truncation_side
        encoded = self.tokenizer.encode(texts, direction)
        self._check_lengths([count for _, count in encoded], options, texts)
        self.tower.stats.preprocess("tokenize", time.perf_counter_ns() - started)
        return [TokenRow(ids, skip) for ids, _ in encoded]

    def id_rows(self, ids: list[list[int]], options: TextOptions) -> list[TokenRow]:
        """Token ids as given (special tokens included), checked against the vocabulary and
        truncated like texts. Prompts apply to texts only."""
        self.tower.admit(len(ids))
        for index, row in enumerate(ids):
            if not row:
                raise InputError(f"input[{index}] holds no token ids; send at least one")
            bad = next((i for i in row if not 0 <= i < self.tokenizer.vocab_size), None)
            if bad is not None:
                raise InputError(
                    f"input[{index}] holds token id {bad}, outside this model's vocabulary "
                    f"(0 to {self.tokenizer.vocab_size - 1})"
                )
        self._check_lengths([len(row) for row in ids], options)
        direction = options.direction or self.tokenizer.spec.truncation_side
        return [TokenRow(self.tokenizer.truncate_ids(row, direction)) for row in ids]

    def _check_lengths(
        self, counts: list[int], options: TextOptions, texts: list[str] | None = None
    ) -> None:
        """With truncate false, the first input past the maximum is a 400 with its exact token
        count: a long text was cut before tokenizing, so only that one is counted in full."""
        if options.truncate:
            return
        for index, count in enumerate(counts):
            if count > self.max_length:
                exact = self.tokenizer.count(texts[index]) if texts is not None else count
                raise TextTooLong(index, exact, self.max_length)

    def embed(self, rows: list[TokenRow]) -> np.ndarray:
        return self.tower.infer(rows, lengths=[len(row.ids) for row in rows])

    def warm_up(self) -> None:
        """The largest execution the batcher forms (texts of the model's maximum length, or of
        the token budget where that is shorter, so that a 32k-token model's warm-up costs no
        more than one budget's execution), then the smallest input: one empty text, the
        readiness probe."""
        side = self.tokenizer.spec.truncation_side
        width = min(self.max_length, self.tower.batcher.config.max_tokens)
        [(longest, _)] = self.tokenizer.encode([longest_text(width)], side)
        self.tower.run_largest(TokenRow(longest[:width]), width)
        [(ids, _)] = self.tokenizer.encode([""], side)
        self.tower.warm_up([TokenRow(ids)], lengths=[len(ids)])


def collate_rows(
    tokenizer: TextTokenizer, names: list[str], rows: list[TokenRow]
) -> dict[str, np.ndarray]:
    """One execution's rows as the text tower's padded inputs."""
    return tokenizer.batch([row.ids for row in rows], names, [row.skip for row in rows])


def collate_packed(tokenizer: TextTokenizer, rows: list[TokenRow]) -> dict[str, np.ndarray]:
    """One execution's rows as the packed text graph's inputs (runtime.batching.packing)."""
    return pack([row.ids for row in rows], tokenizer.spec.pad_id)
