"""timm image classifiers -> `image.onnx` (uint8 in, logits out) + `labels.txt` + manifest."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config

from builder.errors import BuildError
from builder.image_input import ImageInput
from builder.onnx_export import OPSET, export_onnx
from builder.options import BuildOptions, write_labels
from builder.progress import Progress
from builder.verify import load_staged, verify_classifier, verify_precisions
from runtime.models import Model
from runtime.preprocessing.images import RESAMPLING
from runtime.repository.manifest import ClassifierSpec, ImageSpec, Manifest, TensorSpec, TowerSpec

OUTPUT = "logits"
PIXELS = "pixels"
DEFAULT_CROP_PCT = 0.875


def timm_name(source: str) -> str:
    """timm's own name: `hf_hub:timm/X`, `hf-hub:timm/X` and `timm/X` are Hub models."""
    for prefix in ("hf_hub:", "hf-hub:"):
        if source.startswith(prefix):
            return "hf-hub:" + source[len(prefix) :]
    if source.startswith("timm/"):
        return "hf-hub:" + source
    return source


def load(source: str, options: BuildOptions, progress: Progress) -> torch.nn.Module:
    name = timm_name(source)
    kwargs = {} if options.num_classes is None else {"num_classes": options.num_classes}
    with progress.stage(f"Loading {source} with timm"):
        try:
            if options.checkpoint is not None:
                model = timm.create_model(
                    name, pretrained=False, checkpoint_path=str(options.checkpoint), **kwargs
                )
            else:
                model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:
            raise BuildError(
                f"cannot load {source!r} with timm: {error}. Use hf_hub:timm/NAME (Hub "
                "reachable), or an architecture name with --checkpoint FILE [--num-classes N]"
            ) from error
    return model.eval()


def image_spec(config: dict) -> ImageSpec:
    """timm's inference transform (transforms_imagenet_eval) for a resolved data config."""
    if config.get("crop_border_pixels"):
        raise BuildError("timm data configs with crop_border_pixels are not supported")
    interpolation = config.get("interpolation", "bilinear")
    if interpolation not in RESAMPLING:
        raise BuildError(f"timm interpolation {interpolation!r} is not supported")
    height, width = config["input_size"][1:]
    crop_pct = config.get("crop_pct") or DEFAULT_CROP_PCT
    scale = [math.floor(height / crop_pct), math.floor(width / crop_pct)]
    mean = [float(v) for v in config["mean"]]
    common = {
        "size": [height, width],
        "interpolation": interpolation,
        "mean": mean,
        "std": [float(v) for v in config["std"]],
        "resize_size": scale,
    }
    mode = config.get("crop_mode") or "center"
    if mode == "squash":
        return ImageSpec(resize_mode="squash", **common)
    if mode == "border":
        fill = [round(255 * v) for v in mean]
        return ImageSpec(resize_mode="keep_ratio", longest=1.0, fill_color=fill, **common)
    if scale[0] == scale[1]:
        return ImageSpec(resize_mode="shortest", **common)
    return ImageSpec(resize_mode="keep_ratio", longest=0.0, **common)


def class_labels(model: torch.nn.Module, options: BuildOptions, progress: Progress) -> list[str]:
    """--labels, else the pretrained config's label names, else ImageNet's by class count."""
    count = model.num_classes
    labels = options.read_labels()
    if labels is not None:
        if len(labels) != count:
            raise BuildError(f"--labels has {len(labels)} labels; the model has {count} classes")
        return labels
    config = getattr(model, "pretrained_cfg", {}) or {}
    names = config.get("label_names")
    descriptions = config.get("label_descriptions")
    if isinstance(descriptions, dict) and names:
        names = [descriptions.get(name, name) for name in names]
    elif descriptions:
        names = list(descriptions)
    if names and len(names) == count:
        return [str(name) for name in names]
    subset = infer_imagenet_subset(model)
    if subset is not None:
        return ImageNetInfo(subset).label_descriptions()
    progress.say(f"warning: no label names for {count} classes; using class_0 .. class_{count - 1}")
    return [f"class_{index}" for index in range(count)]


def build(
    source: str, name: str, staging: Path, options: BuildOptions, progress: Progress
) -> Manifest:
    model = load(source, options, progress)
    if not getattr(model, "num_classes", 0):
        raise BuildError(f"{source!r} has no classifier head (num_classes is 0)")
    config = resolve_data_config({}, model=model)
    image = image_spec(config)
    labels = class_labels(model, options, progress)
    height, width = image.size

    with progress.stage(f"Exporting the classifier to ONNX (opset {OPSET})"):
        example = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
        export_onnx(
            ImageInput(model, image.mean, image.std),
            (example,),
            staging / "image.onnx",
            [PIXELS],
            OUTPUT,
            {PIXELS: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    count = len(labels)
    manifest = Manifest(
        name=name,
        library="timm",
        task="classification",
        towers={
            "image": TowerSpec(
                onnx="image.onnx",
                inputs=[TensorSpec(PIXELS, "uint8", ["batch", 3, height, width])],
                output=TensorSpec(OUTPUT, "float32", ["batch", count]),
                dim=count,
                max_batch=options.max_batch,
            )
        },
        image=image,
        classifier=ClassifierSpec(kind="logits", labels_file=write_labels(staging, labels)),
        build={"source": source, "architecture": type(model).__name__, "data_config": config},
    )
    transform = timm.data.create_transform(**config, is_training=False)

    def reference(images: list[Image.Image]) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.stack([transform(image) for image in images]))
        return torch.softmax(logits, dim=-1).numpy()

    def check(staged: Model, strict: bool) -> dict[str, dict]:
        return {"image": verify_classifier(staged, reference, strict=strict)}

    with progress.stage("Verifying ONNX Runtime against timm"):
        verification = check(load_staged(staging, manifest), True)
    progress.report(verification["image"])
    manifest = replace(manifest, build={**manifest.build, "verification": verification})
    return verify_precisions(staging, manifest, check, progress)
