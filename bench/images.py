"""The image variant of `bench compare`: a tiny random OpenCLIP model built locally (as the
tests build theirs), its image tower in-process against `/embed_image` on the server, in the
same run. The tower is tiny, so the figures are mostly what a server adds around an image
model: base64 and HTTP, decoding and preprocessing in request threads, batching."""

from __future__ import annotations

import base64
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.compare import load_figures, serving
from runtime.config import RuntimeConfig
from runtime.models import Model
from runtime.repository import Repository
from runtime.tasks.image_embedding import embed_images

CLIP = "bench/tiny-clip"
IMAGE_LOADS = ((32, 1), (32, 8))


def ensure_tiny_clip(engines: Path) -> str:
    """A tiny random CLIP, built into `engines` once."""
    from builder import Progress, build_model
    from tests.models import tiny_clip

    scratch = Path(tempfile.mkdtemp(prefix="ingrain-bench-clip-"))
    source = f"local-dir:{tiny_clip(scratch / 'clip')}"
    build_model(source, engines, CLIP, skip_existing=True, progress=Progress(quiet=True))
    return CLIP


def photos(count: int = 64, size: tuple[int, int] = (320, 240)) -> list[str]:
    """Deterministic JPEGs of a photo's size (smooth gradients and noise), as base64."""
    rng = np.random.default_rng(0)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    encoded = []
    for index in range(count):
        base = np.stack([x * 255 / width, y * 255 / height, (x + y + 7 * index) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=85)
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return encoded


def in_process(engines: Path, images: list[str], runtime: RuntimeConfig, batch: int = 32) -> dict:
    """Decode, preprocess and embed in batches of `batch`, in this process (the ceiling)."""
    model = Model.load(Repository(engines).find(CLIP), runtime)
    rounds = 4
    started = time.perf_counter()
    for _ in range(rounds):
        for start in range(0, len(images), batch):
            embed_images(model, images[start : start + batch])
    seconds = time.perf_counter() - started
    model.close()
    return {"items_per_s": round(rounds * len(images) / seconds, 2)}


def image_figures(
    engines: Path, serve_args: list[str], seconds: float, runtime: RuntimeConfig
) -> dict:
    """Images/s in-process (batches of 32) and through the server at 32 clients x 1 and x 8
    images, with the server's ratio to in-process."""
    name = ensure_tiny_clip(engines)
    images = photos()
    ceiling = in_process(engines, images, runtime)
    with serving(engines, [name], serve_args) as url:
        server = load_figures(
            url,
            "/embed_image",
            lambda per_request: [
                {"name": name, "image": [images[(i + j) % len(images)] for j in range(per_request)]}
                for i in range(0, len(images), per_request)
            ],
            IMAGE_LOADS,
            seconds,
            item_key="image",
            model=name,
        )
    return {
        "model": name,
        "in_process_batch32": ceiling,
        "server": server,
        "ratios": {
            f"server_{key}_vs_in_process": round(
                figure["server_items_per_s"] / ceiling["items_per_s"], 3
            )
            for key, figure in server.items()
        },
    }
