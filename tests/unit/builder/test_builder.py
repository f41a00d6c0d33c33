"""The builder: export, verification, atomic writes, refusing to overwrite."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from builder import BuildError, Progress, build_model
from builder.verify import verify_text_tower
from runtime.models import Model
from runtime.repository import Repository, slugify
from runtime.repository.manifest import Manifest
from runtime.tasks.text_embedding import TextEmbeddingOptions, embed_texts
from tests.conftest import BIN, EXACT, MINILM, cosines
from tests.models import tiny_sentence_transformer


@pytest.mark.parametrize(
    ("pooling", "dense"),
    [
        ("cls", False),
        ("max", False),
        ("lasttoken", False),
        ("mean_sqrt_len_tokens", False),
        ("mean", True),
    ],
)
def test_pooling_and_dense_heads_export_and_verify(tmp_path, minilm_source, pooling, dense):
    source, reference = tiny_sentence_transformer(tmp_path, minilm_source, pooling, dense)
    engines = tmp_path / "engines"
    build_model(str(source), engines, name=f"tiny/{pooling}", progress=Progress(quiet=True))
    model = Model.load(Repository(engines).find(f"tiny/{pooling}"), EXACT)
    texts = ["one", "two words", "a sentence that runs past the max length " * 20, "", "🚀"]
    served = embed_texts(model, texts, TextEmbeddingOptions(normalize=False))
    expected = reference.encode(texts)
    assert served.shape == (5, 16 if dense else 32)
    assert cosines(served, expected).min() >= 0.9999
    assert np.abs(served - expected).max() < 1e-4
    assert model.manifest.tokenizer.max_length == 64


def test_manifest_records_settings_and_verification(engines):
    manifest = Manifest.read(engines / slugify(MINILM))
    assert manifest.name == MINILM
    assert (manifest.library, manifest.task) == ("sentence_transformers", "embedding")
    assert manifest.build["modules"] == ["Transformer", "Pooling", "Normalize"]
    verification = manifest.build["verification"]["text"]
    assert verification["min_cosine"] >= 0.9999 and verification["max_abs_error"] < 1e-4
    assert verification["items"] >= 10
    assert {"torch", "onnxruntime", "sentence-transformers"} <= set(manifest.build["versions"])
    tower = manifest.towers["text"]
    assert [spec.name for spec in tower.inputs] == ["input_ids", "token_type_ids", "attention_mask"]
    assert (tower.dim, tower.max_batch, tower.max_seq_len) == (384, 32, 256)
    assert (engines / slugify(MINILM) / "tokenizer.json").is_file()
    leftovers = [p.name for p in engines.iterdir() if p.name.startswith(".building")]
    assert leftovers == []


def test_verification_fails_when_the_graph_disagrees(engines, reference):
    model = Model.load(Repository(engines).find(MINILM), EXACT)

    def ids(texts):
        return reference.preprocess(texts)["input_ids"].numpy()

    def shuffled(texts):
        return reference.encode(texts)[::-1]

    with pytest.raises(BuildError, match="does not match its reference"):
        verify_text_tower(model, ids, shuffled, texts=["a cat", "stock markets fell"])

    def other_ids(texts):
        return ids(texts) + 1

    with pytest.raises(BuildError, match="does not reproduce the source tokenizer"):
        verify_text_tower(model, other_ids, reference.encode, texts=["a cat"])


def test_refuses_to_overwrite_without_force(engines, minilm_source):
    before = (engines / slugify(MINILM) / "model.json").read_text()
    with pytest.raises(BuildError, match="--force"):
        build_model(minilm_source, engines, name=MINILM, progress=Progress(quiet=True))
    assert (
        build_model(
            minilm_source, engines, name=MINILM, skip_existing=True, progress=Progress(quiet=True)
        )
        is None
    )
    assert (engines / slugify(MINILM) / "model.json").read_text() == before


def test_failed_build_leaves_the_repository_as_it_was(tmp_path, minilm_source):
    engines = tmp_path / "engines"
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    with pytest.raises(BuildError, match="cannot load"):
        build_model(str(not_a_model), engines, name="x/y", progress=Progress(quiet=True))
    assert list(engines.iterdir()) == []  # no staging directory, no lock file


def test_force_rebuild_replaces_and_a_failed_one_keeps_the_old_model(tmp_path, minilm_source):
    source, _ = tiny_sentence_transformer(tmp_path, minilm_source, "mean", False)
    engines = tmp_path / "engines"
    quiet = Progress(quiet=True)
    build_model(str(source), engines, name="tiny", progress=quiet)
    first = json.loads((engines / "tiny" / "model.json").read_text())["build"]["created"]
    with pytest.raises(BuildError):
        build_model(str(tmp_path / "missing"), engines, name="tiny", force=True, progress=quiet)
    embed_texts(Model.load(Repository(engines).find("tiny")), ["still here"])
    # "created" is in whole seconds: wait (bounded) for the clock to pass the first build's.
    deadline = time.monotonic() + 5
    while time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) == first:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    build_model(str(source), engines, name="tiny", force=True, progress=quiet)
    assert json.loads((engines / "tiny" / "model.json").read_text())["build"]["created"] != first
    assert sorted(p.name for p in engines.iterdir() if not p.name.startswith(".lock")) == ["tiny"]


def build_stopped_while_exporting(tmp_path, minilm_source, signum: int):
    """Start ingrain-build on a tiny model and send it `signum` once it is exporting (its
    staging directory exists then); the finished process, the engines and the command."""
    source, _ = tiny_sentence_transformer(tmp_path, minilm_source, "cls", False)
    engines = tmp_path / "engines"
    command = [str(BIN / "ingrain-build"), str(source), "--name", "tiny", "--engines", str(engines)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "Exporting" in line:
            assert any(p.name.startswith(".building-tiny-") for p in engines.iterdir())
            process.send_signal(signum)
            break
    process.wait(60)
    return process, engines, command


def test_a_build_stopped_with_sigterm_removes_its_staging_directory(tmp_path, minilm_source):
    process, engines, _ = build_stopped_while_exporting(tmp_path, minilm_source, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in process.stderr.read()
    assert Repository(engines).entries() == []
    assert not any(p.name.startswith(".building") for p in engines.iterdir())


def test_a_build_killed_midway_leaves_no_model_and_the_next_build_succeeds(tmp_path, minilm_source):
    process, engines, command = build_stopped_while_exporting(
        tmp_path, minilm_source, signal.SIGKILL
    )
    assert process.returncode == -signal.SIGKILL
    assert Repository(engines).entries() == []
    assert any(p.name.startswith(".building-tiny-") for p in engines.iterdir())
    subprocess.run(command, check=True, capture_output=True)
    assert [entry.name for entry in Repository(engines).entries()] == ["tiny"]
    assert not any(p.name.startswith(".building") for p in engines.iterdir())
