"""Per-dimension ranges of a model's text embeddings on a calibration set, for int8/uint8 output.

The set is made from the model's own vocabulary (whole words only, seeded), so every model,
whatever its language or tokenizer, gets the same kind of varied text without a data download.
The ranges are measured through the runtime on the staged engine, as they will be served.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from runtime.models import Model
from runtime.postprocess import finish_embeddings
from runtime.quantize import quantization_ranges
from runtime.repository.manifest import Manifest
from runtime.tasks.text_embedding import TextEmbeddingOptions, embed_texts

CALIBRATION_TEXTS = 512
# Vocabulary entries that are whole lower-case words once word-boundary marks are removed:
# WordPiece continuations (##) and byte-level fragments drop out.
WORD = re.compile(r"[a-z]{3,}")
MARKS = ("Ġ", "▁", "</w>")


def calibration_texts(
    vocabulary: list[str], count: int = CALIBRATION_TEXTS, seed: int = 0
) -> list[str]:
    """`count` texts of 2 to 60 words drawn from `vocabulary`, the same on every build for the
    same `seed` (another seed: texts apart from these, for held-out checks)."""
    words = set()
    for token in vocabulary:
        for mark in MARKS:
            token = token.replace(mark, "")
        if WORD.fullmatch(token):
            words.add(token)
    pool = sorted(words) or ["text"]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        length = min(60, max(2, int(rng.lognormvariate(2.4, 0.8))))
        texts.append(" ".join(rng.choices(pool, k=length)).capitalize() + ".")
    return texts


def with_calibration(model: Model, manifest: Manifest) -> Manifest:
    """`manifest` with its text tower's int8/uint8 ranges, raw and L2-normalised."""
    assert model.text is not None
    texts = calibration_texts(model.text.tokenizer.vocabulary())
    raw = embed_texts(model, texts, TextEmbeddingOptions(normalize=False))
    quantization = {
        "items": len(texts),
        "raw": quantization_ranges(raw),
        "normalized": quantization_ranges(finish_embeddings(raw, True, None)),
    }
    tower = replace(manifest.towers["text"], quantization=quantization)
    return replace(manifest, towers={**manifest.towers, "text": tower})
