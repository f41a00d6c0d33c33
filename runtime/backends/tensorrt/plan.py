"""The TensorRT logic that needs no GPU: optimization profiles, choosing one for a batch,
buffer sizes, and whether a plan can run on this host. Tested everywhere. The plan's
description (PlanSpec, ProfileRange) is part of the manifest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from runtime.repository.manifest import PlanSpec, ProfileRange


def plan_profiles(
    batch: tuple[int, int, int], sequence: tuple[int, int, int] | None
) -> list[ProfileRange]:
    """A latency profile for small batches and a throughput profile for large ones.

    TensorRT picks kernels for each profile's opt shape, so one profile tuned at batch 1 and one
    tuned at the max batch serve both ends better than a single compromise. When the opt batch
    is the min or the max there is nothing to split, and one profile covers it all.
    """
    low, opt, high = batch
    if not 1 <= low <= opt <= high:
        raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, not {batch}")
    if sequence is not None and not 1 <= sequence[0] <= sequence[1] <= sequence[2]:
        raise ValueError(f"sequence range must satisfy 1 <= min <= opt <= max, not {sequence}")
    if opt in (low, high):
        return [ProfileRange((low, opt, high), sequence)]
    return [ProfileRange((low, low, opt), sequence), ProfileRange((opt + 1, high, high), sequence)]


def select_profile(profiles: Sequence[ProfileRange], batch: int, sequence: int | None) -> int:
    """The index of the first profile whose ranges hold this batch (profiles are ordered from
    small to large, so the smallest that fits wins)."""
    for index, profile in enumerate(profiles):
        if profile.fits(batch, sequence):
            return index
    raise ValueError(
        f"no optimization profile takes batch {batch}"
        + (f" x sequence {sequence}" if sequence is not None else "")
        + f"; the plan was built for {[asdict(p) for p in profiles]}"
    )


def packed_row_lengths(max_seq_len: int | None, max_row_tokens: int) -> tuple[int, int, int]:
    """(min, opt, max) row lengths of a packed graph's plan: the batcher's rows grow to
    `max_row_tokens`, or to the longest text where the model reads longer ones
    (runtime.batching.packing)."""
    longest = max(max_row_tokens, max_seq_len or 512)
    return (1, min(128, longest), longest)


def output_max_shape(shape: Sequence[int], input_max_shape: Sequence[int]) -> tuple[int, ...]:
    """An output's largest shape. A packed graph's first output dimension (one row per text)
    depends on the segment ids, so TensorRT reports it as -1: an execution holds at most one
    text per token of its largest input (rows x length)."""
    most_texts = int(np.prod(input_max_shape[:2], dtype=np.int64))
    return tuple(most_texts if dim < 0 else int(dim) for dim in shape)


def buffer_bytes(max_shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes to hold a tensor at its profile's max shape."""
    if any(dim < 0 for dim in max_shape):
        raise ValueError(f"a buffer needs a concrete max shape, not {max_shape}")
    return int(np.prod(max_shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def incompatibility(
    plan: PlanSpec, tensorrt_version: str, gpu_name: str, capability: str
) -> str | None:
    """Why a plan cannot run here (None when it can): a plan runs only on the TensorRT version
    that built it (unless built version-compatible, then on later ones of the next major) and
    only on GPUs of the compute capability it was built for (unless hardware-compatible)."""
    built_version = plan.tensorrt_version
    built, here = _version(built_version), _version(tensorrt_version)
    later_and_supported = here >= built and here[0] in (built[0], built[0] + 1)
    if here != built and not (plan.version_compatible and later_and_supported):
        return (
            f"the plan was built with TensorRT {built_version}; this host has TensorRT "
            f"{tensorrt_version}"
        )
    compat = plan.hardware_compat
    if compat == "ampere_plus":
        runs_here = int(capability.split(".")[0]) >= 8
    else:  # "none" and "same_cc": the same compute capability only
        runs_here = plan.compute_capability == capability
    if not runs_here:
        return (
            f"the plan was built for {plan.gpu_name} (compute {plan.compute_capability}, "
            f"hardware compatibility {compat}); this host has {gpu_name} (compute {capability})"
        )
    return None


def _version(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())
