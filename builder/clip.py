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
from builder.image_input import ImageInput
from builder.onnx_export import OPSET, export_onnx
from builder.options import DEFAULT_PROMPT, BuildOptions, write_labels
from builder.packed import add_packed
from builder.packed_clip import export_packed, unpackable
from builder.packed_text import PACKED_FILE, verify_packed
from builder.progress import Progress
from builder.verify import (
    load_staged,
    verify_classifier,
    verify_image_tower,
    verify_precisions,
    verify_text_tower,
)
from runtime.models import Model
from runtime.repository.manifest import (
    ClassifierSpec,
    ImageSpec,
    Manifest,
    TensorSpec,
    TokenizerSpec,
    TowerSpec,
)

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
        return ImageSpec(resize_mode="shortest", interpolation=interpolation, **common)
    # open_clip resizes non-square targets with ResizeKeepRatio's default (bicubic).
    return ImageSpec(resize_mode="keep_ratio", interpolation="bicubic", longest=0.0, **common)


def logit_scale_and_bias(model: torch.nn.Module) -> tuple[float, float | None]:
    """The model's own logit scale (exp of the learned log scale) and bias (SigLIP), if any."""
    bias = model.logit_bias
    return float(model.logit_scale.detach().exp()), None if bias is None else float(bias.detach())


def zero_shot_classes(
    model: torch.nn.Module, tokenizer, labels: list[str], prompts: tuple[str, ...]
) -> np.ndarray:
    """Each label's class embedding: its prompts' unit text embeddings, averaged and
    renormalised (CLIP's prompt ensembling)."""
    with torch.no_grad():
        rows = []
        for label in labels:
            embeddings = model.encode_text(tokenizer([p.format(label) for p in prompts]))
            mean = torch.nn.functional.normalize(embeddings, dim=-1).mean(dim=0)
            rows.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.stack(rows).numpy().astype(np.float32)


def zero_shot_classifier(
    model: torch.nn.Module, tokenizer, options: BuildOptions, staging: Path, progress: Progress
) -> ClassifierSpec | None:
    labels = options.read_labels()
    if labels is None:
        if options.prompts:
            raise BuildError(
                "--prompt on a CLIP model is a zero-shot template and needs --labels: the "
                "classes to build prompts for (NAME=TEXT prompts are for sentence-transformers)"
            )
        return None
    prompts = options.prompts or (DEFAULT_PROMPT,)
    for prompt in prompts:
        if "{}" not in prompt:
            raise BuildError(f"--prompt {prompt!r} has no {{}} where the label goes")
    with progress.stage(f"Embedding {len(labels)} classes x {len(prompts)} prompts"):
        np.save(staging / "classes.npy", zero_shot_classes(model, tokenizer, labels, prompts))
    scale, bias = logit_scale_and_bias(model)
    return ClassifierSpec(
        kind="zero_shot",
        labels_file=write_labels(staging, labels),
        # SigLIP-style models (with a logit bias) score each class independently.
        activation="sigmoid" if bias is not None else "softmax",
        class_embeddings="classes.npy",
        logit_scale=scale,
        logit_bias=bias,
        prompts=list(prompts),
    )


def build(
    source: str, name: str, staging: Path, options: BuildOptions, progress: Progress
) -> Manifest:
    max_batch = options.max_batch
    model, preprocess, tokenizer = load(source, progress)
    classifier = zero_shot_classifier(model, tokenizer, options, staging, progress)
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
            ImageInput(model, image.mean, image.std, method="encode_image"),
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
        classifier=classifier,
        build={
            "source": source,
            "architecture": type(model).__name__,
            "logit_scale_and_bias": logit_scale_and_bias(model),
        },
    )

    def reference_images(images: list[Image.Image]) -> np.ndarray:
        with torch.no_grad():
            return model.encode_image(torch.stack([preprocess(im) for im in images])).numpy()

    def reference_probabilities(images: list[Image.Image], spec: ClassifierSpec) -> np.ndarray:
        classes = torch.from_numpy(np.load(staging / "classes.npy"))
        features = torch.nn.functional.normalize(torch.from_numpy(reference_images(images)), dim=-1)
        logits = spec.logit_scale * features @ classes.T + (spec.logit_bias or 0.0)
        return (
            torch.sigmoid(logits) if spec.activation == "sigmoid" else logits.softmax(-1)
        ).numpy()

    def reference_texts(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return model.encode_text(tokenizer(texts)).numpy()

    def check(staged: Model, strict: bool) -> dict[str, dict]:
        figures = {
            "text": verify_text_tower(
                staged, lambda texts: tokenizer(texts).numpy(), reference_texts, strict=strict
            ),
            "image": verify_image_tower(staged, reference_images, strict=strict),
        }
        if classifier is not None:
            figures["classifier"] = verify_classifier(
                staged, lambda images: reference_probabilities(images, classifier), strict=strict
            )
        return figures

    with progress.stage("Verifying ONNX Runtime against open_clip"):
        verification = check(load_staged(staging, manifest), True)
    for figures in verification.values():
        progress.report(figures)
    manifest = replace(manifest, build={**manifest.build, "verification": verification})
    manifest = add_packed(
        manifest,
        "text",
        staging / PACKED_FILE,
        unpackable(model),
        lambda: export_packed(model, staging / PACKED_FILE, text_dim),
        lambda trial: verify_packed(staging, manifest, trial, reference_texts),
        progress,
    )
    return verify_precisions(staging, manifest, check, progress)
