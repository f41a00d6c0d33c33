"""The OpenVINO backend: parity with ONNX Runtime and the source libraries, precision choice and
fallback, the compiled-model cache across real worker starts, and what /metrics reports."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from builder.verify import verification_images
from runtime.backends import BackendUnavailable
from runtime.backends.openvino import OpenVinoBackend, bf16_supported
from runtime.config import CACHE_OFF, RuntimeConfig
from runtime.models import Model, ModelLoadError
from runtime.precision import choose, shortfall
from runtime.preprocessing.images import decode, preprocess
from runtime.repository import Repository, slugify
from runtime.repository.manifest import Manifest
from runtime.tasks.text_embedding import embed_texts
from runtime.text import TextOptions
from tests.conftest import CLIP, MINILM, TIMM, copy_tree, cosines

TEXTS = [
    "a cat",
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "Ünïcödé tëxt wîth áccents",
    "",
]
# Which of these run depends on the CPU (the `cpu_feature` mark lets them skip).
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="this CPU does not report BF16")
without_bf16 = pytest.mark.skipif(bf16_supported(), reason="this CPU reports BF16")
pytestmark = pytest.mark.cpu_feature


def load(engines: Path, name: str, **settings) -> Model:
    """`name` on OpenVINO unless `settings` say otherwise (`auto` measures which is faster)."""
    config = RuntimeConfig(**{"compile_cache": CACHE_OFF, "backend": "openvino", **settings})
    return Model.load(Repository(engines).find(name), config)


def pixels_for(model: Model) -> np.ndarray:
    assert model.image is not None
    decoded = [decode(data, 10**9) for data in verification_images()]
    return np.stack([preprocess(image, model.image.spec) for image in decoded])


def engine_of(encoder) -> tuple[str, str]:
    return encoder.tower.backend.name, encoder.tower.backend.precision


def tower_outputs(model: Model) -> dict[str, np.ndarray]:
    outputs = {}
    if model.text is not None:
        outputs["text"] = model.text.embed(model.text.rows(TEXTS, TextOptions()))
    if model.image is not None:
        outputs["image"] = model.image.embed(pixels_for(model))
    return outputs


@pytest.mark.parametrize("name", [MINILM, CLIP, TIMM])
def test_openvino_f32_matches_onnx_runtime(engines, name):
    openvino = load(engines, name, backend="openvino", precision="f32")
    onnxruntime = load(engines, name, backend="onnxruntime")
    try:
        for encoder in (openvino.text, openvino.image):
            if encoder is not None:
                assert engine_of(encoder) == ("openvino", "f32")
        served, expected = tower_outputs(openvino), tower_outputs(onnxruntime)
        assert served.keys() == expected.keys() and served
        for key in served:
            assert cosines(served[key], expected[key]).min() >= 0.99999, key
            assert np.abs(served[key] - expected[key]).max() < 1e-3, key
    finally:
        openvino.close()
        onnxruntime.close()


def test_the_build_records_openvino_figures_per_tower(engines):
    repository = Repository(engines)
    expected = {"f32", "bf16"} if bf16_supported() else {"f32"}
    for name in (MINILM, CLIP):
        for key, tower in repository.find(name).manifest.towers.items():
            assert set(tower.precisions) == expected, (name, key)
            assert tower.precisions["f32"]["min_cosine"] >= 0.9999
    [classifier] = repository.find(TIMM).manifest.towers.values()
    assert classifier.precisions["f32"]["top1_agreement"] == 1.0
    assert classifier.precisions["f32"]["max_probability_error"] <= 1e-4


@needs_bf16
def test_bf16_minilm_matches_sentence_transformers(engines, reference):
    model = load(engines, MINILM, backend="openvino", precision="bf16")
    try:
        assert model.text.tower.backend.precision == "bf16"
        served = embed_texts(model, TEXTS)
    finally:
        model.close()
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    assert cosines(served, expected).min() >= 0.999


@needs_bf16
@pytest.mark.parametrize("name", [CLIP, TIMM])
def test_auto_serves_only_what_reaches_the_thresholds(engines, name):
    """On a BF16 CPU, `auto` measures bf16 where the build's figures pass and never elsewhere;
    whatever it picks is within the thresholds of the f32 engine."""
    served_model = load(engines, name, backend="auto")
    f32 = load(engines, name, backend="openvino", precision="f32")
    try:
        for key, tower in served_model.manifest.towers.items():
            encoder = served_model.text if key == "text" else served_model.image
            passed = shortfall(tower.precisions["bf16"]) is None
            measured = encoder.tower.backend.decision.figures
            assert ("openvino/bf16" in measured) == passed
            assert passed or encoder.tower.backend.precision == "f32"
        served, expected = tower_outputs(served_model), tower_outputs(f32)
        for key in served:
            if name == TIMM:
                assert (served[key].argmax(1) == expected[key].argmax(1)).all()
            else:
                assert cosines(served[key], expected[key]).min() >= 0.999
    finally:
        served_model.close()
        f32.close()


def test_precision_choice():
    passing = {"bf16": {"min_cosine": 0.9999, "max_abs_error": 1e-3}}
    failing = {"bf16": {"min_cosine": 0.998, "max_abs_error": 1e-2}}
    wrong_class = {"bf16": {"top1_agreement": 0.9, "max_probability_error": 1e-3}}
    blurred = {"bf16": {"top1_agreement": 1.0, "max_probability_error": 0.05}}
    assert choose("f32", True, passing) == ("f32", None)
    assert choose("auto", False, passing) == ("f32", None)
    assert choose("auto", True, passing) == ("bf16", None)
    assert choose("bf16", True, passing) == ("bf16", None)
    for record in (failing, wrong_class, blurred):
        for requested in ("auto", "bf16"):
            precision, why = choose(requested, True, record)
            assert precision == "f32" and "failed verification" in why
    precision, why = choose("auto", True, None)
    assert precision == "f32" and "not verified" in why
    precision, why = choose("bf16", True, {})
    assert precision == "bf16" and "not verified" in why
    with pytest.raises(BackendUnavailable, match="does not report BF16"):
        choose("bf16", False, passing)


def failing_bf16_copy(engines: Path, tmp_path: Path) -> Repository:
    """MiniLM with a manifest whose recorded bf16 figures are below the serving threshold."""
    directory = tmp_path / slugify(MINILM)
    copy_tree(engines / slugify(MINILM), directory)
    manifest = Manifest.read(directory)
    records = {"f32": {"min_cosine": 1.0}, "bf16": {"min_cosine": 0.998, "max_abs_error": 0.1}}
    text = replace(manifest.towers["text"], precisions=records)
    replace(manifest, towers={"text": text}).write(directory)
    return Repository(tmp_path)


def test_a_bf16_below_its_recorded_threshold_is_never_served(engines, tmp_path, caplog):
    entry = failing_bf16_copy(engines, tmp_path).find(MINILM)
    with caplog.at_level(logging.WARNING):
        model = Model.load(entry, RuntimeConfig(compile_cache=CACHE_OFF))
    try:
        assert model.text.tower.backend.precision == "f32"
        assert "openvino/bf16" not in model.text.tower.backend.decision.figures
        if bf16_supported():
            assert "bf16 failed verification" in caplog.text and "0.998" in caplog.text
    finally:
        model.close()


@without_bf16
def test_bf16_on_a_cpu_without_it_is_a_clean_error(engines):
    with pytest.raises(ModelLoadError, match="does not report BF16"):
        load(engines, MINILM, precision="bf16")
    per_model = RuntimeConfig(model_precision=((MINILM, "bf16"),), compile_cache=CACHE_OFF)
    with pytest.raises(ModelLoadError, match="does not report BF16"):
        Model.load(Repository(engines).find(MINILM), per_model)


def test_unavailable_backends_and_precisions_are_clean_errors(engines):
    with pytest.raises(ModelLoadError, match="bf16 runs on the OpenVINO backend only"):
        load(engines, MINILM, backend="onnxruntime", precision="bf16")
    with pytest.raises(ModelLoadError, match="unknown backend 'openvino2'"):
        load(engines, MINILM, backend="openvino2")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        RuntimeConfig(precision="fp8")


def test_serve_refuses_bad_precision_flags(engines, tmp_path):
    from tests.integration.test_cli import run

    bad = run("ingrain-serve", "--engines", str(engines), "--precision", "fp8")
    assert bad.returncode == 2 and "fp8" in bad.stderr
    bad = run("ingrain-serve", "--engines", str(engines), "--model-precision", f"{MINILM}:bf16")
    assert bad.returncode == 2 and "NAME=PRECISION" in bad.stderr
    bad = run("ingrain-serve", "--engines", str(engines), "--model-precision", "nope=f32")
    assert bad.returncode == 1 and "--model-precision nope: not in" in bad.stderr


def cache_files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file()
    }


def test_an_unwritable_cache_falls_back_to_compiling(engines, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING):
        model = load(engines, MINILM, compile_cache=str(blocker / "cache"))
    try:
        assert embed_texts(model, ["still served"]).shape == (1, 384)
    finally:
        model.close()
    assert "no compiled-model cache" in caplog.text and "--compile-cache" in caplog.text


def test_a_cache_directory_keeps_engine_directories_untouched(engines, tmp_path):
    # A copy without the cache: other tests' servers write into the shared repository's.
    copy = copy_tree(engines / slugify(MINILM), tmp_path / "engines" / slugify(MINILM))
    model = load(copy.parent, MINILM, compile_cache=str(tmp_path / "cache"))
    model.close()
    assert list((tmp_path / "cache" / slugify(MINILM)).rglob("*.blob"))
    assert [path.name for path in copy.iterdir() if path.name.startswith(".")] == []


def resident_mb() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_kernels_kept_per_input_shape_are_bounded(engines):
    """Texts of every length make new (rows, length) shapes without end: OpenVINO's kernels per
    shape (about 1.5 MB each) must not pile up in a worker: 200 new shapes after a warm-up of 50
    grow it by far less than they do with OpenVINO's default cache (~300 MB)."""
    directory = Repository(engines).find(MINILM).directory
    spec = Manifest.read(directory).towers["text"]
    backend = OpenVinoBackend(directory / spec.onnx, "f32", threads=1)
    shapes = [(rows, length) for length in range(8, 58) for rows in range(1, 6)]

    def run(rows: int, length: int) -> None:
        ids = np.full((rows, length), 1000, dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        backend.run({t.name: feeds.get(t.name, np.zeros_like(ids)) for t in spec.inputs})

    for shape in shapes[:50]:
        run(*shape)
    warm = resident_mb()
    for shape in shapes[50:]:
        run(*shape)
    grown = resident_mb() - warm
    backend.close()
    print(f"resident memory grew {grown:.0f} MB over {len(shapes) - 50} new shapes")
    assert grown < 100
