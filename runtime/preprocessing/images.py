"""Decode image bytes safely and reproduce the source model's resize/crop recipe with Pillow.

The recipe follows torchvision's transforms on PIL images (which call Pillow themselves), so the
pixels equal what open_clip's or timm's `preprocess` produces for the same RGB image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.repository.manifest import ImageSpec

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


# Every decode below checks its own pixel limit before touching pixel data, with a message that
# names the size; Pillow's process-wide limit would pre-empt it with a vaguer one.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """Bytes that are not an acceptable image; the message says why."""


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """An RGB image from encoded bytes, refusing decompression bombs before decoding pixels."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels"
            )
        image.load()
        return image.convert("RGB")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not an image in a supported format ({', '.join(FORMATS)})"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageDecodeError(f"the image is corrupt or truncated: {error}") from None


def preprocess(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Resize and crop an RGB image as the model's own preprocessing does; uint8 CHW."""
    size = tuple(spec.size)
    target = tuple(spec.resize_size or spec.size)
    resample = RESAMPLING[spec.interpolation]
    if spec.resize_mode == "squash":
        if target != (image.height, image.width):
            image = image.resize((target[1], target[0]), resample)
    elif spec.resize_mode == "shortest":
        image = _resize_shortest(image, target[0], resample)
    else:
        image = _resize_keep_ratio(image, target, spec.longest, resample)
    if spec.crop:
        fill = spec.fill_color
        image = _center_crop(image, size, tuple(fill) if isinstance(fill, list) else (fill,) * 3)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _resize_shortest(image: Image.Image, size: int, resample: int) -> Image.Image:
    """torchvision Resize(size): the shorter edge becomes `size`, the longer is truncated."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) == image.size:
        return image
    return image.resize((new_width, new_height), resample)


def _resize_keep_ratio(
    image: Image.Image, target: tuple[int, int], longest: float, resample: int
) -> Image.Image:
    """open_clip's and timm's ResizeKeepRatio at inference (no random scale or aspect)."""
    width, height = image.size
    ratio_h, ratio_w = height / target[0], width / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    size = (round(width / ratio), round(height / ratio))
    return image if size == image.size else image.resize(size, resample)


def _center_crop(image: Image.Image, size: tuple[int, int], fill: tuple[int, ...]) -> Image.Image:
    """torchvision's centre crop, padding with `fill` first where the image is smaller."""
    crop_h, crop_w = size
    width, height = image.size
    if crop_w > width or crop_h > height:
        left = (crop_w - width) // 2 if crop_w > width else 0
        top = (crop_h - height) // 2 if crop_h > height else 0
        right = (crop_w - width + 1) // 2 if crop_w > width else 0
        bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        canvas = Image.new("RGB", (width + left + right, height + top + bottom), fill)
        canvas.paste(image, (left, top))
        image = canvas
        width, height = image.size
        if (width, height) == (crop_w, crop_h):
            return image
    top = round((height - crop_h) / 2.0)
    left = round((width - crop_w) / 2.0)
    return image.crop((left, top, left + crop_w, top + crop_h))
