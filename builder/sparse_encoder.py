"""sentence-transformers SparseEncoder (SPLADE) models -> `text.onnx` whose output is the
vocabulary-sized sparse vector: the MLM head, SPLADE's activation (log(1 + relu)) and its pooling
(max or sum over tokens) all run in the graph, so the server only picks out the non-zeros.

Inference-free SPLADE (a Router whose "document" side is that MLM + SpladePooling and whose
"query" side is a SparseStaticEmbedding) exports its document side so, and its query side as
the lookup it is: `query_weights.npy` (a weight per vocabulary token) and `query_tokenizer.json`
(its tokenizer, adding no special tokens), served with no network (runtime.sparse).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from builder.errors import BuildError
from builder.onnx_export import OPSET, export_token_model, token_tower
from builder.options import BuildOptions
from builder.progress import Progress
from builder.sentence_transformer import (
    apply_prompts,
    max_length_of,
    text_inputs,
    write_tokenizer,
)
from builder.verify import (
    VERIFICATION_TEXTS,
    check_token_ids,
    cosine_rows,
    load_staged,
    verify_precisions,
)
from runtime.models import Model
from runtime.repository.manifest import Manifest, SparseQuerySpec, TokenizerSpec
from runtime.sparse import SPARSE_TASK, TASKS, SparseVector
from runtime.tasks.sparse_embedding import SparseEmbeddingOptions, embed_sparse

OUTPUT = "sparse_embedding"
QUERY_WEIGHTS = "query_weights.npy"
QUERY_TOKENIZER = "query_tokenizer.json"
# A tokenizer's model_max_length past this means "no maximum" (transformers' 1e30).
UNBOUNDED = 10**6
# float32 sums carry an absolute error, so near zero a relative bound needs a floor: values
# agree within MAX_RELATIVE_ERROR of the reference's value plus ZERO_ROUNDING of the row's
# largest value; an index present on one side only is a mismatch unless its value is within
# that floor (the two round it to zero differently).
MAX_RELATIVE_ERROR = 1e-4
ZERO_ROUNDING = 1e-5


class _SpladeEmbedding(torch.nn.Module):
    """The transformer's MLM logits, then SPLADE: log(1 + relu(logits)) (once more log1p for
    `log1p_relu`) over the attended tokens, pooled by max or sum. Written out of place, as
    sentence-transformers' SpladePooling computes it in eval mode."""

    def __init__(self, transformer: torch.nn.Module, pooling: torch.nn.Module, names: list[str]):
        super().__init__()
        self.transformer = transformer
        self.strategy = pooling.pooling_strategy
        self.double_log = pooling.activation_function == "log1p_relu"
        self.input_names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = self.transformer(dict(zip(self.input_names, tensors, strict=True)))
        logits = features["token_embeddings"]
        mask = features["attention_mask"].unsqueeze(-1).to(logits.dtype)
        scores = torch.log1p(torch.relu(logits * mask))
        if self.double_log:
            scores = torch.log1p(scores)
        return scores.amax(dim=1) if self.strategy == "max" else scores.sum(dim=1)


class Sides(NamedTuple):
    """What a SparseEncoder computes: the document side (MLM transformer, SpladePooling), and
    for inference-free models the query side's SparseStaticEmbedding and the side
    SparseEncoder.encode takes without a task."""

    document: Any
    query: Any | None = None
    default_task: str | None = None


def load(source: str, progress: Progress):
    from sentence_transformers import SparseEncoder

    with progress.stage(f"Loading {source} with sentence-transformers (SparseEncoder)"):
        try:
            model = SparseEncoder(source, device="cpu")
        except Exception as error:
            raise BuildError(f"cannot load {source!r} as a SparseEncoder: {error}") from error
    sides_of(source, model)  # refuses what cannot be served before any work
    return model.eval()


def _names(modules) -> list[str]:
    return [type(module).__name__ for module in modules]


def sides_of(source: str, model) -> Sides:
    """The model's document side (and query side, for inference-free SPLADE), or a BuildError
    saying which module layouts are served."""
    served = (
        "ingrain-build serves SPLADE encoders (an MLM transformer then SpladePooling) and "
        'inference-free SPLADE (a Router: "query" a SparseStaticEmbedding, "document" an MLM '
        "transformer then SpladePooling)"
    )
    kinds = _names(model)
    if len(kinds) == 2 and kinds[1] == "SpladePooling":
        return Sides(model)
    if kinds != ["Router"]:
        raise BuildError(f"{source!r} has modules {kinds}; {served}")
    router = model[0]
    routes = {name: _names(modules) for name, modules in router.sub_modules.items()}
    document = routes.get("document", [])
    if (
        set(routes) != set(TASKS)
        or router.route_mappings
        or routes["query"] != ["SparseStaticEmbedding"]
        or len(document) != 2
        or document[1] != "SpladePooling"
    ):
        mappings = f" and route mappings {router.route_mappings}" if router.route_mappings else ""
        raise BuildError(f"{source!r} is a Router of {routes}{mappings}; {served}")
    # No default route: SparseEncoder.encode needs a task; the server's default is documents.
    default = router.default_route or "document"
    return Sides(router.sub_modules["document"], router.sub_modules["query"][0], default)


def build(
    source: str, name: str, staging: Path, options: BuildOptions, progress: Progress
) -> Manifest:
    if options.labels is not None:
        raise BuildError("--labels is for timm classifiers and CLIP zero-shot models")
    model = load(source, progress)
    sides = sides_of(source, model)
    transformer, pooling = sides.document[0], sides.document[1]
    hf_tokenizer, input_names = text_inputs(source, sides.document)
    prompts = apply_prompts(model, options)
    max_length = max_length_of(source, transformer.max_seq_length, options.max_seq_len)
    with progress.stage("Writing tokenizer.json"):
        tokenizer = write_tokenizer(staging, hf_tokenizer, max_length)
    side = " (the document side)" if sides.query is not None else ""
    with progress.stage(f"Exporting the sparse text tower{side} to ONNX (opset {OPSET})"):
        example = transformer.preprocess(["a short example", "and a longer example sentence"])
        module = _SpladeEmbedding(transformer, pooling, input_names).eval()
        with torch.no_grad():
            dim = int(module(*(example[n] for n in input_names)).shape[1])
        export_token_model(module, example, staging / "text.onnx", input_names, OUTPUT)
    sparse_query = None
    if sides.query is not None:
        with progress.stage(f"Writing the query side's lookup ({QUERY_WEIGHTS})"):
            sparse_query = write_query_lookup(source, staging, sides)
    manifest = Manifest(
        name=name,
        library="sparse_encoder",
        task=SPARSE_TASK,
        towers={
            "text": token_tower(
                "text.onnx", input_names, OUTPUT, dim, options.max_batch, max_length
            )
        },
        tokenizer=tokenizer,
        prompts=prompts,
        build={
            "source": source,
            "modules": _modules(model),
            "pooling": "splade",
            "splade": {
                "pooling_strategy": pooling.pooling_strategy,
                "activation_function": pooling.activation_function,
            },
        },
        sparse_query=sparse_query,
    )
    # The tower serves "document" on inference-free models (encode_document), every request
    # on the others (encode).
    tower_task = None if sides.query is None else "document"

    def check(staged: Model, strict: bool) -> dict[str, dict]:
        return {"text": verify_sparse(staged, model, strict, tower_task)}

    with progress.stage(f"Verifying ONNX Runtime against SparseEncoder.{_METHODS[tower_task]}"):
        staged = load_staged(staging, manifest)
        try:
            verification = check(staged, True)
            if sides.query is not None:
                verification["query"] = verify_sparse(staged, model, True, "query")
        finally:
            staged.close()
    for figures in verification.values():
        progress.report(figures)
    manifest = replace(manifest, build={**manifest.build, "verification": verification})
    return verify_precisions(staging, manifest, check, progress)


def _modules(model) -> list[str] | dict[str, list[str]]:
    """The module layout, recorded in the manifest: a list, or a Router's list per route."""
    kinds = _names(model)
    if kinds != ["Router"]:
        return kinds
    return {route: _names(modules) for route, modules in model[0].sub_modules.items()}


def write_query_lookup(source: str, staging: Path, sides: Sides) -> SparseQuerySpec:
    """The SparseStaticEmbedding's weights as a float32 .npy, and its tokenizer without the
    special tokens it is called without (sentence-transformers tokenizes queries with
    add_special_tokens=False, truncated to the tokenizer's model_max_length)."""
    from tokenizers import Tokenizer

    static = sides.query
    hf_tokenizer = static.tokenizer
    if not hf_tokenizer.is_fast:
        raise BuildError(f"{source!r}: the query side has no fast (tokenizers) tokenizer")
    np.save(staging / QUERY_WEIGHTS, static.weight.detach().float().cpu().numpy())
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    backend.post_processor = None  # what add_special_tokens=False leaves out
    backend.save(str(staging / QUERY_TOKENIZER))
    spec = TokenizerSpec(
        file=QUERY_TOKENIZER,
        max_length=min(hf_tokenizer.model_max_length, UNBOUNDED),
        truncation_side=hf_tokenizer.truncation_side,
        padding_side=hf_tokenizer.padding_side,
        pad_id=hf_tokenizer.pad_token_id or 0,
        pad_token=hf_tokenizer.pad_token or "[PAD]",
    )
    assert sides.default_task is not None
    return SparseQuerySpec(QUERY_WEIGHTS, spec, sides.default_task)


# The SparseEncoder method each served task is verified against.
_METHODS = {None: "encode", "query": "encode_query", "document": "encode_document"}


def _dense(vectors: list[SparseVector], dim: int) -> np.ndarray:
    rows = np.zeros((len(vectors), dim), dtype=np.float32)
    for row, vector in zip(rows, vectors, strict=True):
        row[vector.indices] = vector.values
    return rows


def verify_sparse(
    staged: Model,
    reference,
    strict: bool,
    task: str | None = None,
    texts: list[str] = VERIFICATION_TEXTS,
) -> dict:
    """What the server answers for `task` (None: a request naming none) against the
    SparseEncoder method for it (encode, encode_query, encode_document): the tower's token ids
    equal the source tokenizer's; each text's non-zero indices are the reference's (but for
    values that round to zero on one side only) and its values are within MAX_RELATIVE_ERROR of
    the reference's."""
    assert staged.text is not None
    labels = [repr(text[:60]) for text in texts]
    if task != "query":  # the query lookup's ids show in its values, compared below
        tokenizer = staged.text.tokenizer
        ours = tokenizer.batch(tokenizer.token_ids(texts), ["input_ids"])["input_ids"]
        routed = {} if task is None else {"task": task}
        check_token_ids(ours, reference.preprocess(texts, **routed)["input_ids"].numpy(), labels)
    encode = getattr(reference, _METHODS[task])
    expected = encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    expected = expected.cpu().numpy().astype(np.float32)
    vectors = embed_sparse(staged, texts, SparseEmbeddingOptions(side=task))
    served = _dense(vectors, expected.shape[1])
    row_max = np.maximum(np.abs(expected).max(axis=1, keepdims=True), 1e-12)
    floor = ZERO_ROUNDING * row_max
    error = np.abs(served - expected)
    mismatched = ((served != 0) != (expected != 0)) & (np.maximum(served, expected) > floor)
    # Error over what the bound allows (at most 1 passes); relative error where values matter.
    excess = error / (MAX_RELATIVE_ERROR * np.abs(expected) + floor)
    large = np.abs(expected) >= 0.01 * row_max
    relative = np.where(large, error / np.maximum(np.abs(expected), floor), 0.0)
    worst = int(excess.max(axis=1).argmax())
    figures = {
        "items": len(texts),
        "min_cosine": _min_cosine(served, expected),
        "max_abs_error": float(error.max()),
        "max_relative_error": float(relative.max()),
        "index_mismatches": int(mismatched.sum()),
        "threshold": MAX_RELATIVE_ERROR,
    }
    if strict and mismatched.any():
        row = int(mismatched.any(axis=1).argmax())
        raise BuildError(
            f"the served {_side(task)}'s non-zero indices differ from SparseEncoder."
            f"{_METHODS[task]}'s on {labels[row]} ({int(mismatched[row].sum())} indices)"
        )
    if strict and excess.max() > 1:
        raise BuildError(
            f"the served {_side(task)}'s values differ from SparseEncoder.{_METHODS[task]}'s by "
            f"more than {MAX_RELATIVE_ERROR} (relative, floored at {ZERO_ROUNDING} of the row's "
            "largest) "
            f"on {labels[worst]}: max abs error {error.max():.2e}"
        )
    return figures


def _min_cosine(served: np.ndarray, expected: np.ndarray) -> float:
    """Over the rows either side has entries in (a query of no weighted token has none)."""
    rows = (served != 0).any(axis=1) | (expected != 0).any(axis=1)
    return float(cosine_rows(served[rows], expected[rows]).min()) if rows.any() else 1.0


def _side(task: str | None) -> str:
    return "query lookup" if task == "query" else "sparse text tower"
