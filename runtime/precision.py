"""Which precision a tower runs at on the CPU, from what was asked, what the CPU can do, and
what ingrain-build measured for that precision against the source library."""

from __future__ import annotations

from runtime.backends.base import BackendUnavailable

# A reduced precision is served only when its figures (recorded by ingrain-build) reach these.
MIN_COSINE = 0.999
MAX_PROBABILITY_ERROR = 1e-2
MIN_TOP1_AGREEMENT = 1.0


def shortfall(figures: dict) -> str | None:
    """Why recorded verification figures are not good enough to serve (None when they are)."""
    if figures.get("min_cosine", 1.0) < MIN_COSINE:
        return f"its minimum cosine {figures['min_cosine']:.6f} is below {MIN_COSINE}"
    if figures.get("top1_agreement", 1.0) < MIN_TOP1_AGREEMENT:
        return f"its top-1 agreement {figures['top1_agreement']:.4f} is below {MIN_TOP1_AGREEMENT}"
    if figures.get("max_probability_error", 0.0) > MAX_PROBABILITY_ERROR:
        return (
            f"its probabilities differ by up to {figures['max_probability_error']:.2e} "
            f"(more than {MAX_PROBABILITY_ERROR})"
        )
    return None


def choose(requested: str, bf16_capable: bool, recorded: dict | None) -> tuple[str, str | None]:
    """The precision to run (`f32` or `bf16`) and, when it differs from a plain choice, why.

    `auto` runs bf16 only where the CPU reports BF16 and ingrain-build verified bf16 for this
    tower; an explicit `bf16` also runs unverified (with a warning) but never below its recorded
    figures, and is an error on a CPU without BF16.
    """
    if requested == "f32":
        return "f32", None
    if not bf16_capable:
        if requested == "bf16":
            raise BackendUnavailable(
                "bf16 was requested, but this CPU does not report BF16 to OpenVINO (its "
                "OPTIMIZATION_CAPABILITIES); use --precision f32 or auto"
            )
        return "f32", None
    figures = (recorded or {}).get("bf16")
    if figures is None:
        unverified = "bf16 was not verified by ingrain-build for this tower"
        if requested == "bf16":
            return "bf16", f"{unverified}; serving it as asked"
        return "f32", f"{unverified} (rebuild it on a CPU with BF16 to serve bf16); serving f32"
    reason = shortfall(figures)
    if reason is not None:
        return "f32", f"bf16 failed verification ({reason}); serving f32"
    return "bf16", None
