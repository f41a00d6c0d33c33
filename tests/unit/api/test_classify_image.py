"""/classify_image with a timm classifier and CLIP zero-shot, in-process (falcon's test client),
against the libraries on the same weights; label routes; classifier-specific building."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import timm
import torch
from falcon.testing import Result
from PIL import Image

from builder import BuildError, BuildOptions, Progress, build_model
from builder.timm_classifier import image_spec
from builder.verify import verification_images
from runtime.postprocess import sigmoid, softmax
from runtime.preprocessing.images import decode, preprocess
from tests.conftest import (
    CLIP,
    CUSTOM_CLIP,
    MINILM,
    PROMPTS,
    SIGLIP_ZERO_SHOT,
    TIMM,
    ZERO_SHOT,
)
from tests.models import LABELS, TIMM_ARCH, tiny_timm_classifier


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


IMAGES = [verification_images()[i] for i in (0, 1, 2, 5)]  # small enough for the body limit


def decoded(images: list[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in images]


@pytest.fixture(scope="module")
def timm_reference(tmp_path_factory):
    checkpoint = tiny_timm_classifier(tmp_path_factory.mktemp("timm-ref"), len(LABELS))
    model = timm.create_model(TIMM_ARCH, num_classes=len(LABELS), checkpoint_path=str(checkpoint))
    config = timm.data.resolve_data_config({}, model=model)
    return model.eval(), timm.data.create_transform(**config, is_training=False)


def zero_shot_reference(clip_reference, name: str, prompts, images: list[bytes], sigmoid_: bool):
    model, preprocess_fn, tokenizer = clip_reference
    with torch.no_grad():
        classes = []
        for label in LABELS:
            texts = model.encode_text(tokenizer([p.format(label) for p in prompts]), normalize=True)
            classes.append(torch.nn.functional.normalize(texts.mean(0), dim=-1))
        image = model.encode_image(
            torch.stack([preprocess_fn(i) for i in decoded(images)]), normalize=True
        )
        logits = model.logit_scale.exp() * image @ torch.stack(classes).T
        if model.logit_bias is not None:
            logits = logits + model.logit_bias
        return (torch.sigmoid(logits) if sigmoid_ else logits.softmax(-1)).numpy()


def classify(app, name: str, images: list[bytes]) -> Result:
    return app.post("/classify_image", json={"name": name, "image": [data_uri(i) for i in images]})


def test_timm_probabilities_match_timm(app, timm_reference):
    response = classify(app, TIMM, IMAGES)
    assert response.status_code == 200, response.text
    body = response.json
    assert set(body) == {"probabilities", "processingTimeMs"}
    served = np.array(body["probabilities"])
    model, transform = timm_reference
    with torch.no_grad():
        expected = model(torch.stack([transform(i) for i in decoded(IMAGES)])).softmax(-1).numpy()
    assert served.shape == (4, len(LABELS))
    assert np.abs(served - expected).max() <= 1e-4
    assert np.allclose(served.sum(axis=1), 1.0, atol=1e-5)


def test_clip_zero_shot_matches_open_clip(app, clip_reference):
    served = np.array(classify(app, ZERO_SHOT, IMAGES).json["probabilities"])
    expected = zero_shot_reference(clip_reference[CLIP], ZERO_SHOT, PROMPTS, IMAGES, False)
    assert np.abs(served - expected).max() <= 1e-4
    assert np.allclose(served.sum(axis=1), 1.0, atol=1e-5)


def test_siglip_style_zero_shot_is_sigmoid_per_class(app, clip_reference):
    served = np.array(classify(app, SIGLIP_ZERO_SHOT, IMAGES).json["probabilities"])
    prompts = ("a photo of a {}.",)
    expected = zero_shot_reference(
        clip_reference[CUSTOM_CLIP], SIGLIP_ZERO_SHOT, prompts, IMAGES, True
    )
    assert np.abs(served - expected).max() <= 1e-4
    assert not np.allclose(served.sum(axis=1), 1.0, atol=1e-2)


@pytest.mark.parametrize("name", [TIMM, ZERO_SHOT, SIGLIP_ZERO_SHOT])
def test_labels_come_back_in_order(app, name):
    response = app.get("/model_classification_labels", params={"name": name})
    assert response.status_code == 200
    assert response.json == {"labels": LABELS}


def test_a_zero_shot_clip_still_embeds(app):
    response = app.post(
        "/embed", json={"name": ZERO_SHOT, "text": "a cat", "image": data_uri(IMAGES[0])}
    )
    assert response.status_code == 200
    assert len(response.json["imageEmbeddings"][0]) == 32


def test_models_without_labels_say_how_to_get_them(app):
    response = classify(app, CLIP, IMAGES[:1])
    assert response.status_code == 400
    assert "ingrain-build SOURCE --labels FILE" in response.json["error"]
    labels = app.get("/model_classification_labels", params={"name": MINILM})
    assert labels.status_code == 400 and "--labels" in labels.json["error"]


def test_classifier_misuse_is_a_clear_4xx(app):
    embed = app.post("/embed_image", json={"name": TIMM, "image": data_uri(IMAGES[0])})
    assert embed.status_code == 400 and "/classify_image" in embed.json["error"]
    text = app.post("/embed_text", json={"name": TIMM, "text": "a cat"})
    assert text.status_code == 400 and "takes images only" in text.json["error"]
    unknown = app.get("/model_classification_labels", params={"name": "no/such"})
    assert unknown.status_code == 404
    missing = app.get("/model_classification_labels")
    assert missing.status_code == 400 and '"name" is required' in missing.json["error"]
    bad = app.post("/classify_image", json={"name": TIMM, "image": ["", data_uri(b"not an image")]})
    assert bad.status_code == 400 and bad.json["error"].startswith("image[0]")
    no_images = app.post("/classify_image", json={"name": TIMM})
    assert no_images.status_code == 400 and '"image" is required' in no_images.json["error"]


def test_embedding_sizes(app):
    def size(name: str) -> Result:
        return app.get("/model_embedding_size", params={"name": name})

    assert size(MINILM).json == {"embeddingSize": 384}
    assert size(CLIP).json == {"embeddingSize": 32}
    assert size(TIMM).status_code == 400


def test_softmax_is_stable_and_sigmoid_saturates_cleanly():
    logits = np.array([[1000.0, 0.0, -1000.0], [3.0, 3.0, 3.0]], dtype=np.float32)
    probabilities = softmax(logits)
    assert np.isfinite(probabilities).all()
    assert np.allclose(probabilities, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]])
    with np.errstate(over="raise"):
        assert np.allclose(sigmoid(np.array([[-1000.0, 0.0, 1000.0]])), [[0, 0.5, 1]])


TIMM_CONFIGS = [
    {
        "input_size": (3, 32, 32),
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
    },
    {
        "input_size": (3, 24, 40),
        "crop_pct": 0.9,
        "crop_mode": "center",
        "interpolation": "bilinear",
    },
    {"input_size": (3, 32, 32), "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bicubic"},
    {
        "input_size": (3, 30, 36),
        "crop_pct": 0.95,
        "crop_mode": "border",
        "interpolation": "bicubic",
    },
]


@pytest.mark.parametrize(
    "config", TIMM_CONFIGS, ids=lambda c: f"{c['crop_mode']}-{c['input_size']}"
)
def test_pillow_preprocessing_equals_timm(config):
    full = {**config, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    spec = image_spec(full)
    transform = timm.data.create_transform(**full, is_training=False)
    mean, std = np.array(full["mean"]).reshape(3, 1, 1), np.array(full["std"]).reshape(3, 1, 1)
    for data in verification_images():
        image = decode(data, max_pixels=10**8)
        ours = (preprocess(image, spec).astype(np.float32) / 255.0 - mean) / std
        assert np.abs(ours - transform(image).numpy()).max() < 1e-5


def test_timm_label_count_must_match(tmp_path):
    checkpoint = tiny_timm_classifier(tmp_path, 3)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    options = BuildOptions(labels=labels, checkpoint=checkpoint, num_classes=3)
    with pytest.raises(BuildError, match="2 labels; the model has 3 classes"):
        build_model(TIMM_ARCH, tmp_path / "e", "x", "timm", options, progress=Progress(quiet=True))


def test_timm_without_label_names_falls_back_to_class_numbers(tmp_path, capsys):
    checkpoint = tiny_timm_classifier(tmp_path, 3)
    options = BuildOptions(checkpoint=checkpoint, num_classes=3)
    target = build_model(TIMM_ARCH, tmp_path / "e", "x", "timm", options)
    assert (target / "labels.txt").read_text().split() == ["class_0", "class_1", "class_2"]
    assert "warning: no label names" in capsys.readouterr().err


def test_a_prompt_without_a_placeholder_is_refused(tmp_path, clip_sources):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\n")
    options = BuildOptions(labels=labels, prompts=("a photo",))
    with pytest.raises(BuildError, match=r"has no \{\} where the label goes"):
        build_model(f"local-dir:{clip_sources[CLIP]}", tmp_path / "e", "x", options=options)
