"""Text classification with a sequence classifier (or, for TEI's /predict, a reranker's one
label): texts or text pairs -> the pair tower's logits -> the source library's activation ->
every label's score, most probable first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.classifier import activate
from runtime.models import Model
from runtime.tasks.capabilities import pair_encoder, wrong_model
from runtime.tasks.rerank import ranked

# A text, or a pair of texts (what a cross-encoder reads).
Sequences = Sequence[tuple[str] | tuple[str, str]]


@dataclass(frozen=True)
class TextClassificationOptions:
    top_k: int | None = None  # labels per text, most probable first (None: all)
    raw_scores: bool = False  # logits instead of the model's activation
    truncate: bool = True  # false refuses a text past the maximum length
    direction: str | None = None  # the side texts are cut on (None: the tokenizer's own)


@dataclass(frozen=True)
class TextClasses:
    scores: np.ndarray  # (texts, labels): probabilities, or logits with raw_scores
    top: list[list[tuple[str, float]]]  # per text: (label, score), best first, cut to top_k


class TextClassification:
    """`rerankers`: a reranker's pair scores count as classes too (TEI's /predict)."""

    def __init__(
        self,
        model: Model,
        options: TextClassificationOptions | None = None,
        rerankers: bool = False,
    ) -> None:
        self.options = options = options or TextClassificationOptions()
        if model.pair is None or model.classifier is None:
            raise wrong_model(
                model,
                "a text classifier",
                "build a *ForSequenceClassification model for text classification",
            )
        if model.manifest.task != "text-classification" and not rerankers:
            raise wrong_model(model, "a text classifier")
        self.pair = pair_encoder(model, options.direction)
        self.labels = model.classifier.labels

    def run(self, inputs: Sequences) -> TextClasses:
        logits = self._logits(inputs)
        scores = logits if self.options.raw_scores else activate(logits, self.pair.activation)
        top = [
            [(self.labels[i], float(row[i])) for i in ranked(row, self.options.top_k)]
            for row in scores
        ]
        return TextClasses(scores, top)

    def _logits(self, inputs: Sequences) -> np.ndarray:
        """Logits per input: single texts and pairs run as two groups, back in input order."""
        singles = [i for i, sequence in enumerate(inputs) if len(sequence) == 1]
        pairs = [i for i, sequence in enumerate(inputs) if len(sequence) == 2]
        logits: np.ndarray | None = None
        for group, second in ((singles, False), (pairs, True)):
            if not group:
                continue
            first = [inputs[i][0] for i in group]
            seconds = [inputs[i][1] for i in group] if second else None
            result = self.pair.logits(first, seconds, self.options.truncate, positions=group)
            if logits is None:
                logits = np.zeros((len(inputs), result.shape[1]), dtype=np.float32)
            logits[group] = result
        assert logits is not None
        return logits


def classify_texts(
    model: Model, texts: list[str], options: TextClassificationOptions | None = None
) -> TextClasses:
    """Every label's probability per text, and the most probable labels."""
    return TextClassification(model, options).run([(text,) for text in texts])
