"""What a build may be asked for beyond its source, in one place for every library."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError

DEFAULT_PROMPT = "a photo of a {}."


@dataclass(frozen=True)
class BuildOptions:
    max_batch: int = 32
    max_seq_len: int | None = None
    # Class names, one per line: a timm classifier's labels, or a CLIP model's zero-shot classes.
    labels: Path | None = None
    # CLIP zero-shot prompt templates with `{}` for the label; several are averaged.
    prompts: tuple[str, ...] = ()
    # timm: an architecture's weights from a local file, and its number of classes.
    checkpoint: Path | None = None
    num_classes: int | None = None

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


def write_labels(staging: Path, labels: list[str]) -> str:
    (staging / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    return "labels.txt"
