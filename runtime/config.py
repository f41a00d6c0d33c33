"""How a serving process runs its models: one frozen object from the command line (or the
server settings) to each tower, so a new runtime setting is one field here rather than one
more argument through every layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.batching import BatchingConfig
from runtime.preprocessing.fetch import FetchLimits

# int8 runs a model's verified int8 variant (ingrain-build --int8) and is never chosen by auto.
PRECISIONS = ("auto", "f32", "bf16", "int8")
# Where OpenVINO keeps compiled models, and `auto` its measured backend choice: inside each
# engine directory, nowhere, or one directory.
CACHE_IN_ENGINE = "engine"
CACHE_OFF = "off"


@dataclass(frozen=True)
class RuntimeConfig:
    backend: str = "auto"
    precision: str = "auto"
    # Per-model precision overrides, (model name, precision) pairs; they win over `precision`.
    model_precision: tuple[tuple[str, str], ...] = ()
    # Inference threads per tower engine; 0 lets the engine use every core.
    threads: int = 0
    # CACHE_IN_ENGINE, CACHE_OFF or a directory path.
    compile_cache: str = CACHE_IN_ENGINE
    # CACHE_IN_ENGINE, CACHE_OFF or a directory path: where `auto` keeps its measured choice.
    state_dir: str = CACHE_IN_ENGINE
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    # Image downloads, and the most pixels one image may decode to.
    fetch: FetchLimits = field(default_factory=FetchLimits)
    max_image_pixels: int = 50_000_000
    # Towers with a packed graph (text, CLIP text, pair) run it on the CPU backends, and on
    # TensorRT where its plan is packed (runtime.batching.packing); False serves the padded graph.
    packing: bool = True

    def __post_init__(self) -> None:
        for precision in (self.precision, *(p for _, p in self.model_precision)):
            if precision not in PRECISIONS:
                raise ValueError(
                    f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
                )

    def precision_for(self, model: str) -> str:
        """The precision asked for `model`: its override, else the server-wide one."""
        return dict(self.model_precision).get(model, self.precision)

    def cache_root(self, directory: Path) -> Path | None:
        """The compiled-model cache root for the engine directory, or None for no cache."""
        return _under(self.compile_cache, directory, ".ov-cache")

    def state_root(self, directory: Path) -> Path | None:
        """Where `auto` keeps the measured backend choice of the engine directory's towers
        (None: measured at every load)."""
        return _under(self.state_dir, directory, ".ingrain-state")


def _under(setting: str, directory: Path, hidden: str) -> Path | None:
    """A hidden directory in the engine directory, none, or the engine's own under `setting`
    (names starting with a dot are not part of the model: runtime.repository.digests)."""
    if setting == CACHE_OFF:
        return None
    if setting == CACHE_IN_ENGINE:
        return directory / hidden
    return Path(setting) / directory.name
