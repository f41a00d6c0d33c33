"""The runtime on its own: repository, tokenizer, backend, post-processing (no HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from runtime.config import RuntimeConfig
from runtime.models import InputError, Model, ModelLoadError
from runtime.postprocess import finish_embeddings
from runtime.repository import ModelNotFound, Repository, slugify
from runtime.repository.manifest import Manifest
from runtime.tasks.text_embedding import TextEmbeddingOptions, embed_texts
from tests.conftest import (
    CLIP,
    CUSTOM_CLIP,
    MINILM,
    SIGLIP_ZERO_SHOT,
    TIMM,
    ZERO_SHOT,
    copy_tree,
    cosines,
)


@pytest.fixture(scope="module")
def model(engines) -> Model:
    return Model.load(
        Repository(engines).find(MINILM), RuntimeConfig(backend="onnxruntime", threads=2)
    )


def test_slugify_is_filesystem_safe():
    assert (
        slugify("sentence-transformers/all-MiniLM-L6-v2")
        == "sentence-transformers--all-MiniLM-L6-v2"
    )
    assert slugify("hf-hub:apple/MobileCLIP-S1") == "hf-hub--apple--MobileCLIP-S1"
    assert "/" not in slugify("../../etc/passwd") and not slugify("../../etc/passwd").startswith(
        "."
    )
    with pytest.raises(ValueError):
        slugify("../")


def test_repository_finds_models_by_manifest_name_only(engines):
    repository = Repository(engines)
    names = [entry.name for entry in repository.entries()]
    assert names == sorted([MINILM, CLIP, CUSTOM_CLIP, TIMM, ZERO_SHOT, SIGLIP_ZERO_SHOT])
    assert repository.find(MINILM).directory.name == slugify(MINILM)
    for name in ["sentence-transformers--all-MiniLM-L6-v2", "../" + MINILM, "nope"]:
        with pytest.raises(ModelNotFound):
            repository.find(name)


def test_repository_skips_broken_and_in_progress_directories(engines, tmp_path):
    repository = Repository(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    (tmp_path / ".building-x-123").mkdir()
    (tmp_path / ".building-x-123" / "model.json").write_text(
        (engines / slugify(MINILM) / "model.json").read_text()
    )
    assert repository.entries() == []


def test_manifest_round_trips(engines):
    directory = engines / slugify(MINILM)
    manifest = Manifest.read(directory)
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert manifest.towers["text"].dim == 384
    assert manifest.tokenizer.max_length == 256
    assert manifest.build["verification"]["text"]["min_cosine"] >= 0.9999


def test_tokenizer_matches_sentence_transformers_including_truncation(model, reference):
    texts = ["Hello, World!", "word " * 1000, "Ünïcödé 日本語 🚀", ""]
    features = reference.preprocess(texts)
    expected = [
        ids[mask.bool()].tolist()
        for ids, mask in zip(features["input_ids"], features["attention_mask"], strict=True)
    ]
    assert model.text.tokenizer.token_ids(texts) == expected
    assert len(model.text.tokenizer.token_ids(["word " * 1000])[0]) == 256


def test_embeddings_match_sentence_transformers_across_batches(model, reference):
    # More texts than max_batch (32), of mixed lengths, so order must survive the split.
    texts = [
        ("short" if i % 3 else "a much longer sentence about many things " * (i % 9)) + str(i)
        for i in range(75)
    ]
    served = embed_texts(model, texts)
    expected = reference.encode(texts, normalize_embeddings=True)
    assert cosines(served, expected).min() >= 0.9999
    assert np.abs(served - expected).max() < 1e-4


def test_n_dims_out_of_range_is_an_input_error(model):
    for n_dims in (0, -3, 385):
        with pytest.raises(InputError, match="between 1 and 384"):
            embed_texts(model, ["a"], TextEmbeddingOptions(n_dims=n_dims))


def test_finish_embeddings_truncates_before_normalising():
    raw = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    assert np.allclose(finish_embeddings(raw, True, 2), [[0.6, 0.8], [0.0, 0.0]])
    assert np.allclose(finish_embeddings(raw, False, 2), [[3.0, 4.0], [0.0, 0.0]])
    assert np.allclose(finish_embeddings(raw, True, None)[0], np.array([3, 4, 12]) / 13.0)


@pytest.mark.parametrize(("graph", "packing"), [("text.packed.onnx", True), ("text.onnx", False)])
def test_a_corrupt_engine_file_fails_with_an_error_naming_it(engines, tmp_path, graph, packing):

    copy = tmp_path / "copy"
    copy_tree(engines / slugify(MINILM), copy)
    (copy / graph).write_bytes(b"truncated")
    entry = Repository(tmp_path).find(MINILM)
    with pytest.raises(ModelLoadError, match=graph.replace(".", r"\.")):
        Model.load(entry, RuntimeConfig(packing=packing))


def test_tensorrt_backend_is_refused_clearly_without_a_plan(engines):
    with pytest.raises(ModelLoadError, match="no TensorRT plan"):
        Model.load(Repository(engines).find(MINILM), RuntimeConfig(backend="tensorrt"))


def test_serving_never_imports_torch(engines):
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from api.app import create_app\n"
        "from api.settings import ServerSettings\n"
        f"create_app(ServerSettings(engines=Path({str(engines)!r}), preload=({MINILM!r},)))\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
