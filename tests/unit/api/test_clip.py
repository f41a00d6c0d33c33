"""OpenCLIP: tokenizer and preprocessing fidelity, and the image routes in-process (falcon's test
client), with URLs fetched from a loopback host."""

from __future__ import annotations

import base64
import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from builder.clip import image_spec
from builder.verify import VERIFICATION_TEXTS, verification_images
from runtime.models import Model
from runtime.preprocessing.images import decode, preprocess
from runtime.repository import Repository
from tests.conftest import CLIP, CUSTOM_CLIP, EXACT, MINILM, cosines
from tests.images import IMAGES, ImageHandler, encoded, jpeg, png, png_header_only


def test_a_one_pixel_image_and_every_format_embed(app, clip_reference):
    images = [png(1, 1), *(encoded(kind) for kind in ("JPEG", "WEBP", "GIF", "BMP", "TIFF"))]
    body = {"name": CLIP, "image": [base64.b64encode(data).decode() for data in images]}
    response = app.post("/embed_image", json=body)
    assert response.status_code == 200, response.text
    served = np.array(response.json["embeddings"])
    expected = unit(reference_images(clip_reference[CLIP], images))
    assert cosines(served, expected).min() >= 0.9999


def reference_images(reference, images: list[bytes]) -> np.ndarray:
    model, preprocess_fn, _ = reference
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    with torch.no_grad():
        return model.encode_image(torch.stack([preprocess_fn(im) for im in decoded])).numpy()


def reference_texts(reference, texts: list[str]) -> np.ndarray:
    model, _, tokenizer = reference
    with torch.no_grad():
        return model.encode_text(tokenizer(texts)).numpy()


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --- fidelity of the runtime's own tokenizing and preprocessing -------------------------------


@pytest.mark.parametrize("name", [CLIP, CUSTOM_CLIP])
def test_token_ids_equal_open_clip(engines, clip_reference, name):
    model = Model.load(Repository(engines).find(name), EXACT)
    texts = [
        *VERIFICATION_TEXTS,
        "&lt;3 &amp;amp; double-escaped",
        "It's <end_of_text> inside",
        "x" * 5000,
        "ÆØÅ naïve café",
    ]
    tokenizer = model.text.tokenizer
    ours = tokenizer.batch(tokenizer.token_ids(texts), ["input_ids"])["input_ids"]
    assert np.array_equal(ours, clip_reference[name][2](texts).numpy())


PREPROCESS_CONFIGS = [
    {"size": 32, "resize_mode": "shortest", "interpolation": "bicubic"},
    {"size": 32, "resize_mode": "shortest", "interpolation": "bilinear"},
    {"size": (32, 48), "resize_mode": "shortest", "interpolation": "bicubic"},
    {"size": 32, "resize_mode": "longest", "interpolation": "bicubic", "fill_color": 77},
    {"size": (24, 40), "resize_mode": "longest", "interpolation": "bilinear", "fill_color": 0},
    {"size": (32, 48), "resize_mode": "squash", "interpolation": "bicubic"},
]


@pytest.mark.parametrize(
    "config", PREPROCESS_CONFIGS, ids=lambda c: f"{c['resize_mode']}-{c['size']}"
)
def test_pillow_preprocessing_equals_open_clip(config):
    mean, std = [0.48, 0.45, 0.40], [0.27, 0.26, 0.28]
    spec = image_spec({**config, "mean": mean, "std": std})
    transform = open_clip.image_transform(
        config["size"],
        is_train=False,
        mean=mean,
        std=std,
        resize_mode=config["resize_mode"],
        interpolation=config["interpolation"],
        fill_color=config.get("fill_color", 0),
    )
    for data in [*verification_images(), jpeg(33, 61)]:
        image = decode(data, max_pixels=10**8)
        ours = preprocess(image, spec).astype(np.float32) / 255.0
        ours = (ours - np.array(mean).reshape(3, 1, 1)) / np.array(std).reshape(3, 1, 1)
        assert np.abs(ours - transform(image).numpy()).max() < 1e-5


# --- over HTTP -------------------------------------------------------------------------------


def test_embed_image_from_url_base64_and_data_uri(app, clip_reference, image_host):
    cat, dog = IMAGES["/cat.png"], IMAGES["/dog.jpg"]
    sources = [
        f"{image_host}/cat.png",
        base64.b64encode(dog).decode(),
        # The declared type is wrong on purpose: the format is sniffed from the bytes.
        "data:image/jpeg;base64," + base64.b64encode(cat).decode(),
        f"{image_host}/wide.png",
    ]
    body = {"name": CLIP, "image": sources, "imageDownloadHeaders": {"X-Token": "secret-1"}}
    response = app.post("/embed_image", json=body)
    assert response.status_code == 200, response.text
    served = np.array(response.json["embeddings"])
    expected = unit(reference_images(clip_reference[CLIP], [cat, dog, cat, IMAGES["/wide.png"]]))
    assert served.shape == (4, 32)
    assert cosines(served, expected).min() >= 0.9999
    assert np.abs(served - expected).max() < 1e-4
    assert ImageHandler.seen_headers["/cat.png"]["X-Token"] == "secret-1"


def test_snake_case_download_headers_and_single_string(app, clip_reference, image_host):
    body = {
        "name": CUSTOM_CLIP,
        "image": f"{image_host}/dog.jpg",
        "image_download_headers": {"Authorization": "Bearer abc"},
        "n_dims": 8,
    }
    response = app.post("/embed_image", json=body)
    assert response.status_code == 200, response.text
    served = np.array(response.json["embeddings"])
    full = reference_images(clip_reference[CUSTOM_CLIP], [IMAGES["/dog.jpg"]])
    assert served.shape == (1, 8)
    assert np.abs(served - unit(full[:, :8])).max() < 1e-4
    assert ImageHandler.seen_headers["/dog.jpg"]["Authorization"] == "Bearer abc"


@pytest.mark.parametrize("name", [CLIP, CUSTOM_CLIP])
def test_embed_text_on_clip_models(app, clip_reference, name):
    texts = ["a photo of a cat", "A DOG &amp; a ball", ""]
    response = app.post("/embed_text", json={"name": name, "text": texts, "normalize": False})
    served = np.array(response.json["embeddings"])
    expected = reference_texts(clip_reference[name], texts)
    assert cosines(served, expected).min() >= 0.9999
    assert np.abs(served - expected).max() < 1e-4


@pytest.mark.parametrize("route", ["/embed", "/infer"])
def test_embed_with_text_and_image_equals_the_separate_calls(app, image_host, route):
    image = f"{image_host}/cat.png"
    texts = ["a cat", "a dog"]
    both = app.post(route, json={"name": CLIP, "text": texts, "image": image})
    assert both.status_code == 200, both.text
    body = both.json
    assert set(body) == {"textEmbeddings", "imageEmbeddings", "processingTimeMs"}
    text_only = app.post("/embed_text", json={"name": CLIP, "text": texts}).json["embeddings"]
    image_only = app.post("/embed_image", json={"name": CLIP, "image": image}).json["embeddings"]
    assert np.allclose(body["textEmbeddings"], text_only, atol=1e-6)
    assert np.allclose(body["imageEmbeddings"], image_only, atol=1e-6)
    just_text = app.post(route, json={"name": CLIP, "text": "a cat"}).json
    assert set(just_text) == {"textEmbeddings", "processingTimeMs"}
    just_image = app.post(route, json={"name": CLIP, "image": image}).json
    assert set(just_image) == {"imageEmbeddings", "processingTimeMs"}


def test_embed_needs_text_or_image(app):
    response = app.post("/embed", json={"name": CLIP})
    assert response.status_code == 400
    assert '"text", "image" or both' in response.json["error"]


def test_image_routes_on_a_text_only_model_say_what_it_supports(app, image_host):
    response = app.post("/embed_image", json={"name": MINILM, "image": f"{image_host}/cat.png"})
    assert response.status_code == 400
    assert "takes text only" in response.json["error"]
    response = app.post(
        "/embed", json={"name": MINILM, "text": "a", "image": f"{image_host}/cat.png"}
    )
    assert response.status_code == 400


BAD_IMAGES = [
    ("{host}/missing", "HTTP 404"),
    ("{host}/text", "not an image"),
    ("{host}/truncated.png", "corrupt or truncated"),
    ("{host}/huge.png", "larger than 100000 bytes"),
    ("{host}/bomb.png", "30000x30000 pixels"),
    ("{host}/loop", "more than 3 redirects"),
    ("{host}/to-metadata", "not allowed"),
    ("{host}/to-file", "scheme other than http"),
    ("{host}/slow", "timed out"),
    ("http://169.254.169.254/latest/meta-data/", "not allowed"),
    ("http://[fd00:ec2::254]/latest/", "not allowed"),
    ("http://127.0.0.1:1/closed-port.png", "unreachable"),
    ("http://no-such-host.invalid/cat.png", "does not resolve"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("ftp://example.com/a.png", "scheme 'ftp' is not allowed"),
    ("not base64 at all!!", "valid base64"),
    ("data:image/png;base64", "malformed data URI"),
    ("data:image/png;base64,AAAA", "not an image"),
    (base64.b64encode(png_header_only(30000, 30000)).decode(), "30000x30000 pixels"),
    (base64.b64encode(jpeg(64, 64)[:600]).decode(), "corrupt or truncated"),
    (base64.b64encode(b"GIF89a" + b"\0" * 20).decode(), "not an image"),
    (base64.b64encode(encoded("WEBP")[:200]).decode(), "corrupt or truncated"),
    (base64.b64encode(encoded("GIF")[:1500]).decode(), "corrupt or truncated"),
]


@pytest.mark.parametrize(("source", "reason"), BAD_IMAGES, ids=[s[:40] for s, _ in BAD_IMAGES])
def test_each_bad_image_is_a_400_naming_its_index(app, image_host, caplog, source, reason):
    images = [f"{image_host}/cat.png", source.format(host=image_host)]
    response = app.post("/embed_image", json={"name": CLIP, "image": images})
    assert response.status_code == 400, response.text
    message = response.json["error"]
    assert message.startswith("image[1]: "), message
    url = images[1]
    if url.startswith("http"):
        # Every failed URL answers alike (no oracle for what an address holds); the log says why.
        assert "could not be fetched" in message, message
        lines = caplog.messages
        assert any(url in line and reason in line for line in lines), reason
    else:
        assert reason in message, message


def test_the_configured_pixel_limit_is_the_boundary(app):
    """The app runs with --max-image-pixels 1000000 (the default is 50 million)."""

    def error(width: int, height: int) -> str:
        image = base64.b64encode(png_header_only(width, height)).decode()
        response = app.post("/embed_image", json={"name": CLIP, "image": image})
        assert response.status_code == 400
        return response.json["error"]

    assert "1000x1001 pixels; the limit is 1000000 pixels" in error(1000, 1001)
    assert "pixels" not in error(1000, 1000)  # at the limit it is decoded (and is corrupt)


def test_a_bad_image_stops_the_whole_request(app, image_host):
    def executions() -> int:
        stats = app.get("/metrics").json["modelStats"]
        return sum(int(s["executionCount"] or 0) for s in stats if s["name"].startswith(CLIP + "/"))

    before = executions()
    response = app.post(
        "/embed", json={"name": CLIP, "text": ["a cat"], "image": [f"{image_host}/missing"]}
    )
    assert response.status_code == 400
    assert executions() == before


def test_download_headers_must_be_strings(app, image_host):
    body = {"name": CLIP, "image": f"{image_host}/cat.png", "imageDownloadHeaders": {"a": 1}}
    response = app.post("/embed_image", json=body)
    assert response.status_code == 400
    assert "imageDownloadHeaders" in response.json["error"]


def test_metrics_count_each_tower_of_a_clip_model_apart(app, image_host):
    def counts() -> dict[str, int]:
        stats = app.get("/metrics").json["modelStats"]
        return {entry["name"]: int(entry["inferenceCount"] or 0) for entry in stats}

    before = counts()
    images = [f"{image_host}/cat.png"] * 3
    assert app.post("/embed_image", json={"name": CLIP, "image": images}).status_code == 200
    assert app.post("/embed_text", json={"name": CLIP, "text": ["a", "b"]}).status_code == 200
    after = counts()
    assert after[f"{CLIP}/image_encoder"] - before[f"{CLIP}/image_encoder"] == 3
    assert after[f"{CLIP}/text_encoder"] - before[f"{CLIP}/text_encoder"] == 2
