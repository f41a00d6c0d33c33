"""Check a freshly exported engine directory against the source library on the same weights.

The check runs the server's own runtime (tokenizer, backend, batching) on the staging
directory, so what is verified is exactly what will be served.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from builder.errors import BuildError
from runtime.manifest import Manifest
from runtime.models import Model
from runtime.repository import Entry

MIN_COSINE = 0.9999

# Short, long past any max length, unicode, markup, and empty-ish texts.
VERIFICATION_TEXTS = [
    "a cat",
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog. " * 200,
    "Ünïcödé tëxt wîth áccents, ß and ligatures ﬁ ﬂ",
    "日本語のテキストと中文文本，还有한국어 텍스트.",  # noqa: RUF001
    "مرحبا بالعالم — שלום עולם",
    "emoji 🚀🔥👍🏽 and symbols ∑∫√≈ ≠ ±",
    "<p>HTML &amp; entities &lt;b&gt;</p>",
    "UPPER CASE and MiXeD CaSe WoRdS",
    "numbers 3.14159 2,718 1e-10 #42 @user https://example.com/path?q=1",
    "",
    " ",
    "\n\t",
    ".",
    "word " * 600,
]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    dot = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return dot / np.maximum(norms, 1e-30)


def verify_text_tower(
    staging: Path,
    manifest: Manifest,
    reference_ids: Callable[[list[str]], list[list[int]]],
    reference_embed: Callable[[list[str]], np.ndarray],
    texts: list[str] = VERIFICATION_TEXTS,
) -> dict[str, float | int]:
    """Token ids must match the source tokenizer exactly; every embedding must reach MIN_COSINE."""
    model = Model.load(Entry(staging, manifest), backend="onnxruntime")
    assert model.text is not None
    ours = model.text.tokenizer.token_ids(texts)
    theirs = reference_ids(texts)
    for text, mine, reference in zip(texts, ours, theirs, strict=True):
        if mine != reference:
            raise BuildError(
                f"tokenizer.json does not reproduce the source tokenizer on {text[:60]!r}: "
                f"{mine[:12]}... != {reference[:12]}..."
            )
    served = model.embed_text(texts, normalize=False, n_dims=None)
    expected = np.asarray(reference_embed(texts), dtype=np.float32)
    cosines = cosine_rows(served, expected)
    report = {
        "texts": len(texts),
        "min_cosine": float(cosines.min()),
        "max_abs_error": float(np.abs(served - expected).max()),
        "threshold": MIN_COSINE,
    }
    worst = int(cosines.argmin())
    if cosines[worst] < MIN_COSINE:
        raise BuildError(
            f"the exported graph does not match the source model: cosine {cosines[worst]:.6f} < "
            f"{MIN_COSINE} on {texts[worst][:60]!r}"
        )
    return report
