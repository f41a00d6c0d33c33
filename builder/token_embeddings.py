"""The optional token-embedding tower of sentence-transformers models (`--token-embeddings`):
each token's output of the pipeline before pooling, as sentence-transformers'
`encode(output_value="token_embeddings")` gives it, for late-interaction use (TEI's /embed_all).

The runtime's towers carry one fixed-width row per item, so the graph zero-pads each text's
token embeddings to the model's maximum length and flattens them; the runtime crops each row
back to its tokens. Right-padding tokenizers only: a left-padded row's tokens would not start
at its first position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from builder.errors import BuildError
from builder.onnx_export import export_token_model, token_tower
from builder.verify import VERIFICATION_TEXTS, compare
from runtime.models import Model
from runtime.repository.manifest import TowerSpec
from runtime.tasks.token_embeddings import embed_tokens

OUTPUT = "token_embeddings"


class _PaddedTokenEmbeddings(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, input_names: list[str], max_length: int) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.max_length = max_length

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors, strict=True))
        for module in self.model:
            features = module(features)
        tokens = features["token_embeddings"]
        tokens = tokens * features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        padded = torch.nn.functional.pad(tokens, (0, 0, 0, self.max_length - tokens.shape[1]))
        return padded.flatten(1)


def export_token_tower(
    model: torch.nn.Module,
    input_names: list[str],
    max_length: int,
    max_batch: int,
    padding_side: str,
    staging: Path,
) -> TowerSpec:
    """Write `tokens.onnx` and describe it."""
    if padding_side != "right":
        raise BuildError(
            "--token-embeddings needs a tokenizer that pads on the right; this one pads on the "
            f"{padding_side}"
        )
    example = model.preprocess(["a short example", "and a somewhat longer example sentence"])
    module = _PaddedTokenEmbeddings(model, input_names, max_length).eval()
    with torch.no_grad():
        width = int(module(*(example[n] for n in input_names)).shape[1])
    export_token_model(module, example, staging / "tokens.onnx", input_names, OUTPUT)
    return token_tower("tokens.onnx", input_names, OUTPUT, width, max_batch, max_length)


def verify_token_tower(staged: Model, reference, strict: bool) -> dict:
    """Every token's embedding (and each text's token count) against sentence-transformers'."""
    texts = VERIFICATION_TEXTS
    served = embed_tokens(staged, texts)
    expected = reference.encode(texts, output_value="token_embeddings", convert_to_numpy=False)
    labels = []
    for text, ours, theirs in zip(texts, served, expected, strict=True):
        if len(ours) != len(theirs):
            raise BuildError(
                f"the token-embedding tower gives {len(ours)} tokens for {text[:60]!r}; "
                f"sentence-transformers gives {len(theirs)}"
            )
        labels += [f"token {i} of {text[:60]!r}" for i in range(len(ours))]
    ours = np.concatenate(served)
    theirs = np.concatenate([t.float().cpu().numpy() for t in expected])
    return compare(ours, theirs, "token-embedding tower", labels, 0.9999 if strict else -1.0)
