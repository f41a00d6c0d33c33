"""The TensorRT logic that needs no GPU: optimization profiles, choosing one for a batch,
buffer sizes, and whether a plan can run on this host. Tested everywhere."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProfileRange:
    """Batch and (text) sequence ranges of one optimization profile: (min, opt, max)."""

    batch: tuple[int, int, int]
    sequence: tuple[int, int, int] | None = None

    def shapes(self, input_shape: list[int | str]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shapes for an input whose dims are 'batch', 'sequence' or fixed."""
        result = []
        for which in range(3):
            shape = []
            for dim in input_shape:
                if dim == "batch":
                    shape.append(self.batch[which])
                elif dim == "sequence":
                    if self.sequence is None:
                        raise ValueError("a sequence dimension needs a sequence range")
                    shape.append(self.sequence[which])
                else:
                    shape.append(int(dim))
            result.append(tuple(shape))
        return tuple(result)

    def fits(self, batch: int, sequence: int | None) -> bool:
        low, _, high = self.batch
        if not low <= batch <= high:
            return False
        if sequence is None or self.sequence is None:
            return True
        return self.sequence[0] <= sequence <= self.sequence[2]

    def to_dict(self) -> dict:
        return {
            "batch": list(self.batch),
            "sequence": list(self.sequence) if self.sequence else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ProfileRange:
        sequence = data.get("sequence")
        return cls(tuple(data["batch"]), tuple(sequence) if sequence else None)


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


def select_profile(profiles: list[ProfileRange], batch: int, sequence: int | None) -> int:
    """The index of the first profile whose ranges hold this batch (profiles are ordered from
    small to large, so the smallest that fits wins)."""
    for index, profile in enumerate(profiles):
        if profile.fits(batch, sequence):
            return index
    raise ValueError(
        f"no optimization profile takes batch {batch}"
        + (f" x sequence {sequence}" if sequence is not None else "")
        + f"; the plan was built for {[p.to_dict() for p in profiles]}"
    )


def buffer_bytes(max_shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes to hold a tensor at its profile's max shape."""
    if any(dim < 0 for dim in max_shape):
        raise ValueError(f"a buffer needs a concrete max shape, not {max_shape}")
    return int(np.prod(max_shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def incompatibility(
    plan: dict, tensorrt_version: str, gpu_name: str, capability: str
) -> str | None:
    """Why a plan cannot run here (None when it can): a plan runs only on the TensorRT version
    that built it (unless built version-compatible, then on later ones of the next major) and
    only on GPUs of the compute capability it was built for (unless hardware-compatible)."""
    built_version = plan["tensorrt_version"]
    built, here = _version(built_version), _version(tensorrt_version)
    later_and_supported = here >= built and here[0] in (built[0], built[0] + 1)
    if here != built and not (plan.get("version_compatible") and later_and_supported):
        return (
            f"the plan was built with TensorRT {built_version}; this host has TensorRT "
            f"{tensorrt_version}"
        )
    compat = plan.get("hardware_compat", "none")
    if compat == "ampere_plus":
        runs_here = int(capability.split(".")[0]) >= 8
    else:  # "none" and "same_cc": the same compute capability only
        runs_here = plan["compute_capability"] == capability
    if not runs_here:
        return (
            f"the plan was built for {plan['gpu_name']} (compute {plan['compute_capability']}, "
            f"hardware compatibility {compat}); this host has {gpu_name} (compute {capability})"
        )
    return None


def _version(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())
