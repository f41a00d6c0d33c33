"""OpenCLIP models -> `text.onnx` + `image.onnx` + `tokenizer.json` + manifest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip import tokenizer as oc_tokenizer
from PIL import Image

from builder.clip_tokenizer import convert_simple_tokenizer
from builder.errors import BuildError
from builder.onnx_export import OPSET, export_onnx
from builder.progress import Progress
from builder.verify import load_staged, verify_image_tower, verify_text_tower
from runtime.manifest import ImageSpec, Manifest, TensorSpec, TokenizerSpec, TowerSpec

OUTPUT = "embedding"
PIXELS = "pixels"
CLEAN_NAMES = {
    oc_tokenizer._clean_lower: "lower",
    oc_tokenizer._clean_whitespace: "whitespace",
    oc_tokenizer._clean_canonicalize: "canonicalize",
}


class _TextTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


class _ImageTower(torch.nn.Module):
    """uint8 NCHW in: scaling to [0, 1] and mean/std normalisation run inside the graph, so a
    GPU receives a quarter of the bytes that float32 input would need."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image((pixels.float() / 255.0 - self.mean) / self.std)


def model_arguments(source: str) -> tuple[str, str | None]:
    """open_clip's (model_name, pretrained) for `hf-hub:..`, `local-dir:..` or `ARCH/TAG`."""
    if source.startswith(("hf-hub:", "local-dir:")):
        return source, None
    arch, _, pretrained = source.partition("/")
    if not pretrained:
        raise BuildError(
            f"{source!r} names no weights; use hf-hub:ORG/NAME, local-dir:PATH or ARCH/PRETRAINED "
            "(see open_clip.list_pretrained())"
        )
    return arch, pretrained


def load(source: str, progress: Progress):
    name, pretrained = model_arguments(source)
    with progress.stage(f"Loading {source} with open_clip"):
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device="cpu"
            )
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as error:
            raise BuildError(
                f"cannot load {source!r} with open_clip: {error}. Use hf-hub:ORG/NAME (Hub "
                "reachable), local-dir:PATH (open_clip_config.json plus weights) or ARCH/PRETRAINED"
            ) from error
    model.eval()
    return model, preprocess, tokenizer


def tokenizer_files(tokenizer, staging: Path) -> TokenizerSpec:
    """Write `tokenizer.json` for open_clip's tokenizer and describe how the server uses it."""
    context = tokenizer.context_length
    if isinstance(tokenizer, oc_tokenizer.SimpleTokenizer):
        if tokenizer.reduction_fn is not None:
            raise BuildError("open_clip tokenizers with a reduction mask are not supported")
        convert_simple_tokenizer(tokenizer).save(str(staging / "tokenizer.json"))
        return TokenizerSpec(
            file="tokenizer.json",
            max_length=context,
            pad_id=0,
            pad_token="",
            pad_to_max_length=True,
            clean=CLEAN_NAMES[tokenizer.clean_fn],
        )
    if isinstance(tokenizer, oc_tokenizer.HFTokenizer) and tokenizer.tokenizer_mode:
        raise BuildError(f"open_clip tokenizer mode {tokenizer.tokenizer_mode!r} is not supported")
    if not isinstance(tokenizer, oc_tokenizer.HFTokenizer | oc_tokenizer.SigLipTokenizer):
        raise BuildError(f"open_clip tokenizer {type(tokenizer).__name__} is not supported")
    hf = tokenizer.tokenizer
    if not hf.is_fast:
        raise BuildError("the model's Hugging Face tokenizer has no fast (tokenizers) version")
    hf.backend_tokenizer.save(str(staging / "tokenizer.json"))
    clean = (
        "canonicalize"
        if isinstance(tokenizer, oc_tokenizer.SigLipTokenizer)
        else (CLEAN_NAMES[tokenizer.clean_fn])
    )
    strip = getattr(tokenizer, "strip_sep_token", False)
    return TokenizerSpec(
        file="tokenizer.json",
        max_length=context,
        truncation_side=hf.truncation_side,
        padding_side=hf.padding_side,
        pad_id=hf.pad_token_id or 0,
        pad_token=hf.pad_token or "",
        pad_to_max_length=True,
        clean=clean,
        strip_token_id=hf.sep_token_id if strip else None,
    )


def image_spec(config: dict) -> ImageSpec:
    """The inference preprocessing open_clip builds from a model's preprocess config."""
    size = config["size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    interpolation = "bilinear" if config.get("interpolation") == "bilinear" else "bicubic"
    common = {
        "size": [height, width],
        "mean": [float(v) for v in np.broadcast_to(config["mean"], 3)],
        "std": [float(v) for v in np.broadcast_to(config["std"], 3)],
        "fill_color": int(config.get("fill_color", 0)),
    }
    mode = config.get("resize_mode", "shortest")
    if mode == "squash":
        return ImageSpec(resize_mode="squash", interpolation=interpolation, crop=False, **common)
    if mode == "longest":
        return ImageSpec(
            resize_mode="keep_ratio", interpolation=interpolation, longest=1.0, **common
        )
    if height == width:
        return ImageSpec(
            resize_mode="shortest", interpolation=interpolation, resize_size=height, **common
        )
    # open_clip resizes non-square targets with ResizeKeepRatio's default (bicubic).
    return ImageSpec(resize_mode="keep_ratio", interpolation="bicubic", longest=0.0, **common)


def build(
    source: str,
    name: str,
    staging: Path,
    max_batch: int,
    progress: Progress,
) -> Manifest:
    model, preprocess, tokenizer = load(source, progress)
    with progress.stage("Writing tokenizer.json"):
        tokenizer_spec = tokenizer_files(tokenizer, staging)
    image = image_spec(open_clip.get_model_preprocess_cfg(model))
    height, width = image.size

    with torch.no_grad():
        example_ids = tokenizer(["a photo of a cat", "two dogs"])
        example_pixels = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
        text_dim = model.encode_text(example_ids).shape[-1]
        image_dim = model.encode_image(example_pixels.float()).shape[-1]

    with progress.stage(f"Exporting the text tower to ONNX (opset {OPSET})"):
        export_onnx(
            _TextTower(model),
            (example_ids,),
            staging / "text.onnx",
            ["input_ids"],
            OUTPUT,
            {"input_ids": {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    with progress.stage(f"Exporting the image tower to ONNX (opset {OPSET})"):
        export_onnx(
            _ImageTower(model, image.mean, image.std),
            (example_pixels,),
            staging / "image.onnx",
            [PIXELS],
            OUTPUT,
            {PIXELS: {0: "batch"}, OUTPUT: {0: "batch"}},
        )

    context = tokenizer_spec.max_length
    manifest = Manifest(
        name=name,
        library="open_clip",
        task="embedding",
        towers={
            "text": TowerSpec(
                onnx="text.onnx",
                inputs=[TensorSpec("input_ids", "int64", ["batch", context])],
                output=TensorSpec(OUTPUT, "float32", ["batch", text_dim]),
                dim=text_dim,
                max_batch=max_batch,
                max_seq_len=context,
            ),
            "image": TowerSpec(
                onnx="image.onnx",
                inputs=[TensorSpec(PIXELS, "uint8", ["batch", 3, height, width])],
                output=TensorSpec(OUTPUT, "float32", ["batch", image_dim]),
                dim=image_dim,
                max_batch=max_batch,
            ),
        },
        tokenizer=tokenizer_spec,
        image=image,
        build={
            "source": source,
            "architecture": type(model).__name__,
            "logit_scale": float(model.logit_scale.detach().exp()),
            "logit_bias": None if model.logit_bias is None else float(model.logit_bias.detach()),
        },
    )

    def reference_images(images: list[Image.Image]) -> np.ndarray:
        with torch.no_grad():
            return model.encode_image(torch.stack([preprocess(im) for im in images])).numpy()

    def reference_texts(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return model.encode_text(tokenizer(texts)).numpy()

    with progress.stage("Verifying ONNX Runtime against open_clip"):
        staged = load_staged(staging, manifest)
        text_report = verify_text_tower(
            staged, lambda texts: tokenizer(texts).numpy(), reference_texts
        )
        progress.report(text_report)
        image_report = verify_image_tower(staged, reference_images)
        progress.report(image_report)
    verification = {"text": text_report, "image": image_report}
    return replace(manifest, build={**manifest.build, "verification": verification})
