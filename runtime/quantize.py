"""Output precisions with sentence-transformers' `quantize_embeddings` semantics.

int8/uint8 map each dimension's calibrated [min, max] onto 256 buckets; the ranges come from the
manifest (computed by the builder on a calibration set), never from the request's own batch, so
a text's codes do not depend on what else is in its batch. binary/ubinary pack the sign bits of
each row, 8 dimensions a byte (binary offsets the bytes by -128 into int8).
"""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError
from runtime.repository.manifest import TowerSpec

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def quantization_ranges(calibration: np.ndarray) -> list[list[float]]:
    """Per-dimension [mins, maxs] of calibration embeddings, as the manifest stores them."""
    return [calibration.min(axis=0).tolist(), calibration.max(axis=0).tolist()]


def ranges_for(
    quantization: dict | None, normalize: bool, n_dims: int | None, dim: int
) -> np.ndarray:
    """The calibrated ranges for embeddings post-processed this way.

    Raw outputs are calibrated per dimension, so a Matryoshka prefix keeps its ranges; a
    renormalised prefix is scaled per row, which full-dimension calibration cannot describe.
    """
    if quantization is None:
        raise InputError(
            "this output was not calibrated for int8/uint8 (text towers built by this version "
            "of ingrain-build are); binary and ubinary need no calibration"
        )
    if normalize and n_dims is not None and n_dims < dim:
        raise InputError(
            "int8/uint8 ranges are calibrated on full-dimension embeddings: with nDims, send "
            "normalize: false (a plain truncation), or use binary, ubinary or float32"
        )
    ranges = np.asarray(quantization["normalized" if normalize else "raw"], dtype=np.float32)
    return ranges[:, :n_dims] if n_dims is not None else ranges


def quantize(embeddings: np.ndarray, precision: str, ranges: np.ndarray | None) -> np.ndarray:
    """`embeddings` (float32 rows) at `precision`; `ranges` (2 x dims) for int8/uint8."""
    if precision == "float32":
        return embeddings
    if precision in ("int8", "uint8"):
        assert ranges is not None
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return (buckets - 128).astype(np.int8) if precision == "int8" else buckets.astype(np.uint8)
    packed = np.packbits(embeddings > 0, axis=-1)
    if precision == "binary":
        return (packed.astype(np.int16) - 128).astype(np.int8)
    if precision == "ubinary":
        return packed
    raise ValueError(f"unknown precision {precision!r}")


def output_ranges(
    precision: str, spec: TowerSpec, normalize: bool, n_dims: int | None
) -> np.ndarray | None:
    """The ranges `quantize` needs for this precision and post-processing (checked before any
    work is done, so an impossible request fails at once)."""
    if precision not in ("int8", "uint8"):
        return None
    return ranges_for(spec.quantization, normalize, n_dims, spec.dim)
