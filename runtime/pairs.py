"""Cross-encoders and text classifiers: (query, text) pairs or single texts -> logits.

Their one tower (`pair` in the manifest) takes the tokenizer's pair encoding, token type ids
included, so the `tokenizers` library's own pair truncation (`longest_first`, as
transformers and sentence-transformers truncate) decides what the model reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from runtime.batching.packing import pack
from runtime.batching.tower import Collate, Tower
from runtime.errors import InputError, ModelLoadError
from runtime.preprocessing.tokenizer import longest_text, open_tokenizer, readable_parts
from runtime.repository import Entry
from runtime.repository.manifest import TokenizerSpec

# One tower item: (token ids, token type ids).
PairItem = tuple[list[int], list[int]]


class PairTokenizer:
    def __init__(self, directory: Path, spec: TokenizerSpec) -> None:
        self.spec = spec
        self._tokenizer = Tokenizer.from_file(str(directory / spec.file))
        self._tokenizer.enable_truncation(
            spec.max_length, strategy="longest_first", direction=spec.truncation_side
        )
        self._tokenizer.no_padding()
        self._counter = Tokenizer.from_str(self._tokenizer.to_str())
        self._counter.no_truncation()

    def encode(self, first: list[str], second: list[str] | None = None) -> list[Encoding]:
        """One encoding per text, or per (first[i], second[i]) pair, truncated to the model's
        maximum length (special tokens included).

        Each side is first cut to the part the model can read (readable_parts), so the cost
        follows the model's length, not the client's. The encoding is the same: a side cut
        keeps more than the maximum, and `longest_first` ends at the same split whenever a side
        is longer than the whole budget.
        """
        first = self._readable(first)
        inputs = first if second is None else list(zip(first, self._readable(second), strict=True))
        return self._tokenizer.encode_batch(inputs)

    def _readable(self, texts: list[str]) -> list[str]:
        unique = list(dict.fromkeys(texts))  # a query repeated per document is cut once
        parts = readable_parts(
            self._counter, unique, self.spec.max_length, self.spec.truncation_side
        )
        cut = dict(zip(unique, parts, strict=True))
        return [cut[text] for text in texts]

    def batch(self, items: list[PairItem], names: list[str]) -> dict[str, np.ndarray]:
        """Pad a group of items to its longest member, on the side the source tokenizer pads,
        as the model's named int64 inputs."""
        width = max(len(ids) for ids, _ in items)
        arrays = {
            key: np.zeros((len(items), width), dtype=np.int64)
            for key in ("input_ids", "attention_mask", "token_type_ids")
        }
        arrays["input_ids"][:] = self.spec.pad_id
        for row, (ids, type_ids) in enumerate(items):
            start = width - len(ids) if self.spec.padding_side == "left" else 0
            span = slice(start, start + len(ids))
            arrays["input_ids"][row, span] = ids
            arrays["attention_mask"][row, span] = 1
            arrays["token_type_ids"][row, span] = type_ids
        return {name: arrays[name] for name in names}

    def batch_packed(self, items: list[PairItem], names: list[str]) -> dict[str, np.ndarray]:
        """One execution's items as the packed pair graph's named inputs: several per row,
        each token with its type id (runtime.batching.packing)."""
        ids = [ids for ids, _ in items]
        inputs = pack(ids, self.spec.pad_id, token_types=[types for _, types in items])
        return {name: inputs[name] for name in names}


class PairEncoder:
    """The pair tower with its tokenizer, and the activation the source library applies."""

    def __init__(self, tower: Tower, tokenizer: PairTokenizer, activation: str) -> None:
        self.tower = tower
        self.tokenizer = tokenizer
        self.activation = activation

    def logits(
        self,
        first: list[str],
        second: list[str] | None,
        truncate: bool,
        positions: list[int] | None = None,
    ) -> np.ndarray:
        """Logits per text or pair. With `truncate` false, an input past the model's maximum
        length is refused instead of cut, named by its place in `positions` (the request's
        order, where the inputs are a group of it)."""
        return self._infer(self._items(first, second, truncate, positions))

    def _infer(self, items: list[PairItem]) -> np.ndarray:
        return self.tower.infer(items, lengths=[len(ids) for ids, _ in items])

    def _items(
        self,
        first: list[str],
        second: list[str] | None,
        truncate: bool,
        positions: list[int] | None = None,
    ) -> list[PairItem]:
        self.tower.admit(len(first))
        started = time.perf_counter_ns()
        encodings = self.tokenizer.encode(first, second)
        self.tower.stats.preprocess("tokenize", time.perf_counter_ns() - started)
        if not truncate:
            for index, encoding in enumerate(encodings):
                if encoding.overflowing:
                    place = positions[index] if positions is not None else index
                    what = "with the query" if second is not None else "alone"
                    raise InputError(
                        f"text {place} {what} is longer than this model's "
                        f"{self.tokenizer.spec.max_length} tokens; shorten it, or send "
                        '"truncate": true to let the model read only its first tokens'
                    )
        return [(encoding.ids, encoding.type_ids) for encoding in encodings]

    def warm_up(self) -> None:
        """The largest execution the batcher forms, then the smallest input (one empty text,
        the readiness probe), as text embedders warm up (runtime.text)."""
        width = min(self.tokenizer.spec.max_length, self.tower.batcher.config.max_tokens)
        [longest] = self.tokenizer.encode([longest_text(width)])
        self.tower.run_largest((longest.ids[:width], longest.type_ids[:width]), width)
        [encoding] = self.tokenizer.encode([""])
        self.tower.warm_up([(encoding.ids, encoding.type_ids)], lengths=[len(encoding.ids)])

    def query_logits(self, query: str, texts: list[str], truncate: bool) -> tuple[np.ndarray, int]:
        """The logits of each (query, text) pair, and the tokens the model read."""
        items = self._items([query] * len(texts), texts, truncate)
        return self._infer(items), sum(len(ids) for ids, _ in items)


def load_pair_encoder(
    entry: Entry, tower: Callable[[Collate, Collate, Callable[[PairItem], int]], Tower]
) -> PairEncoder:
    """The pair tower of `entry`; `tower` opens it with the given collate functions (padded,
    packed) and an item's token count."""
    manifest, directory = entry.manifest, entry.directory
    if manifest.tokenizer is None or manifest.classifier is None:
        raise ModelLoadError(
            f"{directory}: the pair tower has no tokenizer or labels in model.json"
        )
    tokenizer = open_tokenizer(PairTokenizer, directory, manifest.tokenizer)
    spec = manifest.towers["pair"]
    names = [tensor.name for tensor in spec.inputs]
    packed_names = [tensor.name for tensor in spec.packed.inputs] if spec.packed else []
    encoder = tower(
        partial(tokenizer.batch, names=names),
        partial(tokenizer.batch_packed, names=packed_names),
        lambda item: len(item[0]),
    )
    return PairEncoder(encoder, tokenizer, manifest.classifier.activation)
