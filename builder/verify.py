"""Check a freshly exported engine directory against the source library on the same weights.

The checks run the server's own runtime (tokenizer, image preprocessing, backend, batching) on
the staging directory, so what is verified is exactly what will be served.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from builder.errors import BuildError
from builder.progress import Progress
from runtime.backends import openvino_unavailable
from runtime.config import CACHE_OFF, RuntimeConfig
from runtime.models import Model
from runtime.precision import shortfall
from runtime.preprocessing.images import decode, preprocess
from runtime.repository import Entry
from runtime.repository.manifest import Manifest
from runtime.tasks.embedding import EmbeddingOptions
from runtime.tasks.image_classification import ImageClassification
from runtime.tasks.image_embedding import ImageEmbedding
from runtime.tasks.text_embedding import TextEmbeddingOptions, embed_texts
from runtime.text import TextOptions

MIN_COSINE = 0.9999
MAX_PROBABILITY_ERROR = 1e-4

# Short, long past any max length, unicode, markup, and empty-ish texts.
VERIFICATION_TEXTS = [
    "a cat",
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog. " * 200,
    "Ünïcödé tëxt wîth áccents, ß and ligatures ﬁ ﬂ",
    "日本語のテキストと中文文本，还有한국어 텍스트.",  # noqa: RUF001
    "مرحبا بالعالم — שלום עולם",
    "emoji 🚀🔥👍🏽 and symbols ∑∫√≈ ≠ ±",
    "<p>HTML &amp; entities &lt;b&gt; &quot;quoted&quot; &#39;it&#39;s&#39;</p>",
    "UPPER CASE and MiXeD CaSe WoRdS, don't CAN'T",
    "numbers 3.14159 2,718 1e-10 #42 @user https://example.com/path?q=1",
    "snake_case_words and tabs\tand\nnew lines",
    "",
    " ",
    "\n\t",
    ".",
    "word " * 600,
]

# Width x height: square, portrait, landscape, tiny, extreme aspect ratios.
VERIFICATION_IMAGE_SIZES = [(64, 48), (48, 64), (40, 40), (300, 200), (17, 91), (1, 1), (500, 20)]


def verification_images() -> list[bytes]:
    """Deterministic PNGs with smooth structure and noise, in the sizes above."""
    rng = np.random.default_rng(0)
    images = []
    for width, height in VERIFICATION_IMAGE_SIZES:
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 / max(width, 1), y * 255 / max(height, 1), (x + y) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    dot = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return dot / np.maximum(norms, 1e-30)


def compare(
    served: np.ndarray,
    expected: np.ndarray,
    what: str,
    labels: list[str],
    min_cosine: float = MIN_COSINE,
) -> dict:
    """Cosine and max abs error per row; a BuildError naming the worst row below min_cosine."""
    cosines = cosine_rows(served, expected)
    worst = int(cosines.argmin())
    if cosines[worst] < min_cosine:
        raise BuildError(
            f"the exported {what} does not match its reference: cosine "
            f"{cosines[worst]:.6f} < {min_cosine} on {labels[worst]}"
        )
    return {
        "items": len(served),
        "min_cosine": float(cosines.min()),
        "max_abs_error": float(np.abs(served - expected).max()),
        "threshold": min_cosine,
    }


def load_staged(staging: Path, manifest: Manifest) -> Model:
    """The staged model on ONNX Runtime, not warmed up: the checks run it at once."""
    return Model.load(Entry(staging, manifest), RuntimeConfig(backend="onnxruntime"), warm_up=False)


def _load_to_verify(entry: Entry, config: RuntimeConfig) -> Model:
    """The staged model on OpenVINO in the precision to verify, without the server's warning
    that this precision has no verification figures yet: this is where they are made."""
    backends = logging.getLogger("runtime.backends")
    level = backends.level
    backends.setLevel(logging.ERROR)
    try:
        return Model.load(entry, config, warm_up=False)
    finally:
        backends.setLevel(level)


# One library's checks of a loaded model: figures per check (text, image, classifier). With
# strict False they only measure, for a reduced precision the server may refuse on its figures.
Check = Callable[[Model, bool], dict[str, dict]]


def verify_precisions(staging: Path, manifest: Manifest, check: Check, progress: Progress):
    """Run the checks through OpenVINO in every precision the server may choose on this CPU
    (f32 must pass; bf16 is measured) and record the figures in each tower of the manifest."""
    reason = openvino_unavailable()
    if reason is not None:
        progress.say(f"warning: not verifying OpenVINO: {reason}")
        return manifest
    from runtime.backends.openvino import bf16_supported

    precisions = ["f32", "bf16"] if bf16_supported() else ["f32"]
    if len(precisions) == 1:
        progress.say("    this CPU does not report BF16: only f32 is verified for OpenVINO")
    records: dict[str, dict[str, dict]] = {key: {} for key in manifest.towers}
    for precision in precisions:
        config = RuntimeConfig(backend="openvino", precision=precision, compile_cache=CACHE_OFF)
        with progress.stage(f"Verifying OpenVINO {precision} against {manifest.library}"):
            model = _load_to_verify(Entry(staging, manifest), config)
            try:
                report = check(model, precision == "f32")
            finally:
                model.close()
        for key, figures in report.items():
            progress.report(figures)
            tower = "image" if key == "classifier" else key
            records[tower][precision] = {**records[tower].get(precision, {}), **_served(figures)}
        for tower, figures in records.items():
            why = shortfall(figures.get(precision, {}))
            if why is not None:
                progress.say(f"    {tower} tower: {precision} will not be served: {why}")
    towers = {key: replace(spec, precisions=records[key]) for key, spec in manifest.towers.items()}
    return replace(manifest, towers=towers)


def _served(figures: dict) -> dict:
    """A check's figures in the terms the server judges a precision by."""
    if "top1_agreement" in figures:
        return {
            "top1_agreement": figures["top1_agreement"],
            "max_probability_error": figures["max_abs_error"],
        }
    return {"min_cosine": figures["min_cosine"], "max_abs_error": figures["max_abs_error"]}


def verify_text_tower(
    model: Model,
    reference_ids: Callable[[list[str]], np.ndarray],
    reference_embed: Callable[[list[str]], np.ndarray],
    texts: list[str] = VERIFICATION_TEXTS,
    strict: bool = True,
) -> dict:
    """Token ids must equal the source tokenizer's (padded alike); embeddings reach MIN_COSINE."""
    assert model.text is not None
    tokenizer = model.text.tokenizer
    ours = tokenizer.batch(tokenizer.token_ids(texts), ["input_ids"])["input_ids"]
    check_token_ids(ours, np.asarray(reference_ids(texts)), [repr(text[:60]) for text in texts])
    served = embed_texts(model, texts, TextEmbeddingOptions(normalize=False))
    expected = np.asarray(reference_embed(texts), dtype=np.float32)
    labels = [repr(text[:60]) for text in texts]
    return compare(served, expected, "text tower", labels, MIN_COSINE if strict else -1.0)


def check_token_ids(ours: np.ndarray, theirs: np.ndarray, labels: list[str]) -> None:
    """Padded token-id batches must be equal; a BuildError names the first row that is not."""
    if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        row = next(
            (
                i
                for i in range(len(labels))
                if ours.shape != theirs.shape or not np.array_equal(ours[i], theirs[i])
            ),
            0,
        )
        raise BuildError(
            f"tokenizer.json does not reproduce the source tokenizer on {labels[row]}: "
            f"{ours[row][:12].tolist()}... != {theirs[row][:12].tolist()}..."
        )


def verify_prompt(
    model: Model, name: str, reference_embed: Callable[[list[str]], np.ndarray]
) -> dict:
    """Embeddings with the prompt `name` (a few texts, one past the maximum length) against
    the source library's with the same prompt."""
    texts = VERIFICATION_TEXTS[:4]
    options = TextEmbeddingOptions(normalize=False, text=TextOptions(prompt_name=name))
    served = embed_texts(model, texts, options)
    expected = np.asarray(reference_embed(texts), dtype=np.float32)
    return compare(
        served, expected, f"text tower with prompt {name!r}", [repr(t[:60]) for t in texts]
    )


def check_max_abs(
    served: np.ndarray, expected: np.ndarray, what: str, labels: list[str], strict: bool = True
) -> dict:
    """Scores or probabilities within MAX_PROBABILITY_ERROR of the source library's, per row
    (measured only, when not `strict`)."""
    errors = np.abs(served - expected).reshape(len(served), -1).max(axis=1)
    worst = int(errors.argmax())
    if strict and errors[worst] > MAX_PROBABILITY_ERROR:
        raise BuildError(
            f"the exported {what} does not match the source model: it differs by "
            f"{errors[worst]:.2e} > {MAX_PROBABILITY_ERROR} on {labels[worst]}"
        )
    return {
        "items": len(served),
        "max_abs_error": float(errors.max()),
        "threshold": MAX_PROBABILITY_ERROR,
    }


def _decoded(model: Model, images: list[bytes] | None) -> tuple[list[Image.Image], np.ndarray]:
    """The images as the runtime decodes them, and as its Pillow preprocessing feeds the tower."""
    assert model.image is not None
    decoded = [decode(data, max_pixels=10**9) for data in images or verification_images()]
    return decoded, np.stack([preprocess(image, model.image.spec) for image in decoded])


def _image_labels(images: list[Image.Image]) -> list[str]:
    return [f"a {image.width}x{image.height} image" for image in images]


def verify_image_tower(
    model: Model,
    reference_embed: Callable[[list[Image.Image]], np.ndarray],
    images: list[bytes] | None = None,
    strict: bool = True,
) -> dict:
    """Embeddings of the runtime's own decoding and Pillow preprocessing against the source
    library's preprocessing and model on the same decoded RGB images."""
    decoded, pixels = _decoded(model, images)
    served = ImageEmbedding(model, EmbeddingOptions(normalize=False)).run(pixels)
    expected = np.asarray(reference_embed(decoded), dtype=np.float32)
    labels = _image_labels(decoded)
    return compare(served, expected, "image tower", labels, MIN_COSINE if strict else -1.0)


def verify_classifier(
    model: Model,
    reference_probabilities: Callable[[list[Image.Image]], np.ndarray],
    images: list[bytes] | None = None,
    strict: bool = True,
) -> dict:
    """Class probabilities through the runtime must be within MAX_PROBABILITY_ERROR of the
    source library's on the same decoded images (strict), and pick the same top class."""
    decoded, pixels = _decoded(model, images)
    served = ImageClassification(model).run(pixels)
    expected = np.asarray(reference_probabilities(decoded), dtype=np.float32)
    figures = check_max_abs(served, expected, "classifier", _image_labels(decoded), strict)
    top1 = float(np.mean(served.argmax(axis=1) == expected.argmax(axis=1)))
    return {**figures, "top1_agreement": top1}
