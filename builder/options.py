"""What a build may be asked for beyond its source, in one place for every library."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError

DEFAULT_PROMPT = "a photo of a {}."

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
HARDWARE_COMPAT = ("none", "ampere_plus", "same_cc")
TENSORRT_MIN_COSINE = {"fp32": 0.9999, "tf32": 0.9999, "fp16": 0.999, "bf16": 0.999}


@dataclass(frozen=True)
class TensorRTOptions:
    precision: str = "fp16"
    batch: tuple[int, int, int] = (1, 8, 32)
    sequence: tuple[int, int, int] | None = None  # default: (1, min(128, max), the tower's max)
    workspace_gb: float = 4.0
    opt_level: int = 3
    timing_cache: Path | None = None
    hardware_compat: str = "none"
    version_compatible: bool = False

    def __post_init__(self) -> None:
        for what, ranged in (("batch", self.batch), ("sequence", self.sequence)):
            if ranged is not None and not 1 <= ranged[0] <= ranged[1] <= ranged[2]:
                low, opt, high = ranged
                raise BuildError(
                    f"TensorRT {what} profile {low}/{opt}/{high}: min, opt and max must be "
                    "at least 1 and in that order (--min-*, --opt-*, --max-*)"
                )

    @classmethod
    def for_ranges(
        cls,
        batch: tuple[int, int, int],
        sequence: tuple[int | None, int | None, int | None],
        max_seq_len: int | None,
        **settings,
    ) -> TensorRTOptions:
        """The profiles from the build's flags: opt is clamped into [min, max]; a sequence
        range is only set when a flag asks for one (else the tower's own range applies)."""
        low, opt, high = batch
        low_seq, opt_seq, high_seq = sequence
        ranged = None
        if any(value is not None for value in sequence):
            longest = high_seq or max_seq_len or 512
            low_seq = low_seq or 1
            ranged = (low_seq, min(max(opt_seq or 128, low_seq), longest), longest)
        return cls(batch=(low, min(max(opt, low), high), high), sequence=ranged, **settings)


@dataclass(frozen=True)
class Int8Thresholds:
    """What an int8 variant must reach against the source library on held-out texts
    (builder.int8): embeddings by cosine and top-10 neighbour overlap, rerankers by the share
    of queries whose ranking is unchanged."""

    min_cosine: float = 0.99
    min_overlap: float = 0.9


@dataclass(frozen=True)
class BuildOptions:
    max_batch: int = 32
    max_seq_len: int | None = None
    # Class names, one per line: a timm classifier's labels, or a CLIP model's zero-shot classes.
    labels: Path | None = None
    # `--prompt`: CLIP zero-shot templates with `{}` for the label (several are averaged), or
    # for sentence-transformers models NAME=TEXT prompts that add to or override the model's.
    prompts: tuple[str, ...] = ()
    # timm: an architecture's weights from a local file, and its number of classes.
    checkpoint: Path | None = None
    num_classes: int | None = None
    # Compile TensorRT plans too; None builds ONNX only.
    tensorrt: TensorRTOptions | None = None
    # sentence-transformers: the prompt used when a request names none.
    default_prompt_name: str | None = None
    # Cross-encoders: "rerank" or "text-classification" (default: rerank for one label).
    task: str | None = None
    # Add a verified int8 variant of the text tower (builder.int8), held to these thresholds;
    # None builds none.
    int8: Int8Thresholds | None = None
    # sentence-transformers: also export the per-token embeddings before pooling (tokens.onnx).
    token_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.tensorrt is not None and self.tensorrt.batch[2] != self.max_batch:
            raise BuildError(
                f"the TensorRT profiles end at batch {self.tensorrt.batch[2]} but the engine's "
                f"max batch is {self.max_batch}: they must be the same (--max-batch)"
            )

    def read_labels(self) -> list[str] | None:
        if self.labels is None:
            return None
        try:
            text = self.labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise BuildError(f"cannot read --labels {self.labels}: {error}") from error
        labels = [line.strip() for line in text.splitlines() if line.strip()]
        if not labels:
            raise BuildError(f"--labels {self.labels} holds no labels (one per line)")
        return labels

    def named_prompts(self) -> dict[str, str]:
        """`--prompt NAME=TEXT` values as a dict (sentence-transformers models)."""
        named = {}
        for value in self.prompts:
            name, equals, text = value.partition("=")
            if not equals or not name.strip():
                raise BuildError(
                    f"--prompt {value!r}: a sentence-transformers prompt is NAME=TEXT, e.g. "
                    '--prompt query="query: " (templates with {} are for CLIP zero-shot)'
                )
            named[name.strip()] = text
        return named


def write_labels(staging: Path, labels: list[str]) -> str:
    (staging / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    return "labels.txt"
