"""Truncation, prompts and output precision on the ingrain routes, in-process (falcon's test
client), checked against sentence-transformers itself."""

from __future__ import annotations

import base64
import json
import subprocess

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer, quantize_embeddings

from builder import BuildError, BuildOptions
from builder.verify import verification_images
from runtime.config import RuntimeConfig
from runtime.models import Model
from runtime.repository import Repository, slugify
from runtime.repository.manifest import Manifest
from runtime.tasks.text_embedding import TextEmbedding, TextEmbeddingOptions, embed_texts
from runtime.text import TextOptions
from tests.conftest import BIN, CLIP, MINILM, QUERY_PROMPT, cosines
from tests.models import tiny_sentence_transformer

TEXTS = ["a cat", "The quick brown fox jumps over the lazy dog.", "日本語のテキスト 🚀"]
# Past MiniLM's 256 tokens, with different words at each end so the two sides differ.
LONG = "Rivers run to the sea. " * 60 + "Mountains hold snow and silence. " * 60


def raw(text: TextOptions | None = None) -> TextEmbeddingOptions:
    """Embeddings as the model gives them (not normalised), with the text options given."""
    return TextEmbeddingOptions(normalize=False, text=text or TextOptions())


def embed(app, texts, **options) -> np.ndarray:
    response = app.post("/embed_text", json={"name": MINILM, "text": texts, **options})
    assert response.status_code == 200, response.text
    return np.array(response.json["embeddings"])


@pytest.fixture(scope="module")
def with_query_prompt(minilm_source) -> SentenceTransformer:
    return SentenceTransformer(minilm_source, device="cpu", prompts={"query": QUERY_PROMPT})


@pytest.mark.parametrize("key", ["promptName", "prompt_name"])
def test_prompt_name_equals_sentence_transformers(app, with_query_prompt, key):
    served = embed(app, TEXTS, **{key: "query"})
    expected = with_query_prompt.encode(TEXTS, prompt_name="query")
    assert cosines(served, expected).min() >= 0.9999
    assert cosines(embed(app, TEXTS), expected).min() < 0.999  # the prompt did something


def test_a_literal_prompt_equals_sentence_transformers(app, reference):
    served = embed(app, TEXTS, prompt="passage: ")
    assert cosines(served, reference.encode(TEXTS, prompt="passage: ")).min() >= 0.9999


def test_unknown_prompt_names_and_both_kinds_are_refused(app):
    response = app.post("/embed_text", json={"name": MINILM, "text": "x", "promptName": "nope"})
    assert response.status_code == 400 and "query" in response.json["error"]
    both = {"name": MINILM, "text": "x", "promptName": "query", "prompt": "q: "}
    assert app.post("/embed_text", json=both).status_code == 400


def test_model_info_tells_prompts_and_sizes(app):
    response = app.post("/embed_text", json={"name": MINILM, "text": "warm"})
    info = app.get("/model_info", params={"name": MINILM}).json
    assert response.status_code == 200
    assert info["prompts"] == {"query": QUERY_PROMPT} and info["defaultPromptName"] is None
    assert info["maxLength"] == 256 and info["towers"]["text"]["embeddingSize"] == 384
    assert info["towers"]["text"]["calibrated"] and info["poolingIncludesPrompt"]


@pytest.fixture(scope="module")
def prompt_excluded(tmp_path_factory, minilm_source):
    """A tiny model whose pooling leaves the prompt out, built with the CLI's prompt options."""
    root = tmp_path_factory.mktemp("prompt-excluded")
    source, _ = tiny_sentence_transformer(
        root / "source", minilm_source, "mean", False, include_prompt=False
    )
    command = [
        str(BIN / "ingrain-build"),
        str(source),
        *("--name", "test/tiny-prompt-excluded", "--engines", str(root / "engines")),
        *("--prompt", "query=query: ", "--prompt", "doc=passage: "),
        *("--default-prompt-name", "doc"),
    ]
    subprocess.run(command, check=True, capture_output=True)
    entry = Repository(root / "engines").find("test/tiny-prompt-excluded")
    model = Model.load(entry, RuntimeConfig(backend="onnxruntime"))
    reference = SentenceTransformer(str(source), device="cpu")
    reference.prompts = {"query": "query: ", "doc": "passage: "}
    reference.default_prompt_name = "doc"
    yield entry, model, reference
    model.close()


def test_include_prompt_false_equals_sentence_transformers(prompt_excluded):
    entry, model, reference = prompt_excluded
    assert "pooling_mask" in [tensor.name for tensor in entry.manifest.towers["text"].inputs]
    assert entry.manifest.prompts.default == "doc"
    for name in ("query", "doc"):
        served = embed_texts(model, TEXTS, raw(TextOptions(prompt_name=name)))
        expected = reference.encode(TEXTS, prompt_name=name)
        assert cosines(served, expected).min() >= 0.9999
    default = embed_texts(model, TEXTS, raw())
    assert cosines(default, reference.encode(TEXTS)).min() >= 0.9999
    # Pooling over the prompt too gives something else: the exclusion is real.
    query = embed_texts(model, TEXTS, raw(TextOptions(prompt_name="query")))
    excluded = reference.encode(TEXTS, prompt_name="query")
    reference[1].include_prompt = True
    try:
        included = reference.encode(TEXTS, prompt_name="query")
    finally:
        reference[1].include_prompt = False
    assert np.abs(query - included).max() > 100 * np.abs(query - excluded).max()


def test_rows_with_different_prompts_share_a_batch(prompt_excluded):
    """Each row carries its own prompt length, so concurrent requests batch correctly."""
    _, model, reference = prompt_excluded
    rows = model.text.rows(TEXTS[:2], TextOptions(prompt_name="query"))
    rows += model.text.rows(TEXTS[2:], TextOptions(prompt="a much longer instruction: "))
    served = TextEmbedding(model, raw()).run(rows)
    expected = np.concatenate(
        [
            reference.encode(TEXTS[:2], prompt_name="query"),
            reference.encode(TEXTS[2:], prompt="a much longer instruction: "),
        ]
    )
    assert cosines(served, expected).min() >= 0.9999


@pytest.mark.parametrize("key", ["truncationDirection", "truncation_direction"])
def test_left_truncation_equals_left_truncated_tokenizing(app, minilm_source, key):
    left = SentenceTransformer(minilm_source, device="cpu")
    left.tokenizer.truncation_side = "left"
    expected = left.encode([LONG])
    served = embed(app, [LONG], **{key: "left"})
    assert cosines(served, expected).min() >= 0.9999
    assert cosines(embed(app, [LONG]), expected).min() < 0.99  # right truncation differs


@pytest.mark.parametrize("route", ["/embed_text", "/embed"])
def test_truncate_false_on_a_long_text_is_a_400_naming_it(app, route):
    text = " ".join(f"word{i % 50}" for i in range(1000))
    body = {"name": MINILM, "text": ["short", text], "truncate": False}
    response = app.post(route, json=body)
    assert response.status_code == 400
    message = response.json["error"]
    assert '"text"[1]' in message and "256" in message and "tokens" in message
    assert app.post(route, json={**body, "truncate": True}).status_code == 200


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_precisions_equal_quantize_embeddings(app, precision):
    floats = embed(app, TEXTS).astype(np.float32)
    served = embed(app, TEXTS, precision=precision)
    expected = quantize_embeddings(floats, precision=precision)
    assert served.shape == expected.shape == (3, 48)
    assert np.array_equal(served, expected)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int8_uses_the_calibrated_ranges(app, engines, precision):
    manifest = Manifest.read(engines / slugify(MINILM))
    ranges = np.array(manifest.towers["text"].quantization["normalized"], dtype=np.float32)
    floats = embed(app, TEXTS).astype(np.float32)
    served = embed(app, TEXTS, precision=precision)
    expected = quantize_embeddings(floats, precision=precision, ranges=ranges)
    assert np.array_equal(served, expected)
    # Raw outputs have their own ranges; a Matryoshka prefix of them keeps its ranges.
    raw = embed(app, TEXTS, normalize=False, nDims=64).astype(np.float32)
    raw_ranges = np.array(manifest.towers["text"].quantization["raw"], dtype=np.float32)
    expected = quantize_embeddings(raw, precision=precision, ranges=raw_ranges[:, :64])
    assert np.array_equal(
        embed(app, TEXTS, precision=precision, normalize=False, nDims=64), expected
    )


def test_int8_is_deterministic_across_batchings(app):
    """A text's codes do not depend on what else is in its request (ranges are calibrated, not
    taken from the batch as quantize_embeddings does without ranges)."""
    texts = [f"a sentence about topic number {i}" for i in range(12)]
    batched = embed(app, texts, precision="int8")
    alone = np.concatenate([embed(app, [text], precision="int8") for text in texts])
    halves = np.concatenate(
        [embed(app, texts[:5], precision="int8"), embed(app, texts[5:], precision="int8")]
    )
    assert np.array_equal(batched, alone) and np.array_equal(batched, halves)
    from_batch = quantize_embeddings(embed(app, texts[:5]).astype(np.float32), "int8")
    assert not np.array_equal(from_batch, batched[:5])  # what batch-derived ranges would give


def test_int8_refuses_a_renormalised_prefix(app):
    response = app.post(
        "/embed_text", json={"name": MINILM, "text": "x", "precision": "int8", "nDims": 64}
    )
    assert response.status_code == 400 and "normalize" in response.json["error"]


def test_prompt_arguments_say_which_form_they_take():
    with pytest.raises(BuildError, match="NAME=TEXT"):
        BuildOptions(prompts=("a photo of a {}.",)).named_prompts()
    assert BuildOptions(prompts=("query=query: ", "q=a=b")).named_prompts() == {
        "query": "query: ",
        "q": "a=b",
    }


def test_manifests_without_prompts_or_calibration_still_load(engines):
    data = json.loads((engines / slugify(MINILM) / "model.json").read_text())
    del data["prompts"]
    del data["towers"]["text"]["quantization"]
    manifest = Manifest.from_dict(data)
    assert manifest.prompts is None and manifest.towers["text"].quantization is None


def test_image_embeddings_take_binary_precisions(app):
    image = base64.b64encode(verification_images()[0]).decode()
    body = {"name": CLIP, "image": image}
    floats = np.array(app.post("/embed_image", json=body).json["embeddings"], dtype=np.float32)
    served = app.post("/embed_image", json={**body, "precision": "ubinary"}).json["embeddings"]
    assert np.array_equal(served, quantize_embeddings(floats, precision="ubinary"))
    refused = app.post("/embed_image", json={**body, "precision": "int8"})
    assert refused.status_code == 400 and "binary" in refused.json["error"]


def test_a_prompt_longer_than_a_text_may_be_is_refused(app):
    body = {"name": MINILM, "text": "x", "prompt": "p" * 20_001}
    assert app.post("/embed_text", json=body).status_code == 413
