"""`ingrain-build` (also `ingrain build`, and `python -m builder`, which on-demand builds run
so that the server does not depend on the CLI module)."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from builder.options import (
    HARDWARE_COMPAT,
    PRECISIONS,
    BuildOptions,
    Int8Thresholds,
    TensorRTOptions,
)
from runtime.repository import DEFAULT_ENGINES
from runtime.repository.s3 import S3Location, parse_engines


def _engines(value: str) -> Path | S3Location:
    try:
        return parse_engines(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--engines") from None


# Read as a string (from the variable too), so an s3:// URL keeps its "//".
engines_option = click.option(
    "--engines",
    type=click.Path(file_okay=False),
    envvar="INGRAIN_ENGINES",
    default=DEFAULT_ENGINES,
    callback=lambda _context, _param, value: _engines(value),
    show_default="$INGRAIN_ENGINES or ./engines",
    help="The engine repository: a directory (one directory per built model), or "
    "s3://BUCKET/PREFIX in S3-compatible object storage.",
)


@click.command("build")
@click.argument("source")
@click.option("--name", help="The name to serve the model under (default: SOURCE).")
@click.option(
    "--library",
    type=click.Choice(
        ["sentence_transformers", "open_clip", "timm", "cross_encoder", "sparse_encoder"]
    ),
    help="The library that loads SOURCE (default: timm for hf_hub: names, open_clip for hf-hub: "
    "and local-dir: names, cross_encoder for *ForSequenceClassification models, sparse_encoder "
    "for sentence-transformers SparseEncoder (SPLADE) models, else sentence_transformers).",
)
@click.option(
    "--task",
    type=click.Choice(["rerank", "text-classification"]),
    help="cross_encoder: serve with /rerank (one score per pair) or /classify_text (default: "
    "rerank for one label, text-classification for more).",
)
@engines_option
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=BuildOptions.max_batch,
    show_default=True,
    help="Most items run in one execution.",
)
@click.option(
    "--max-seq-len",
    type=click.IntRange(min=2),
    help="Most tokens per text (default and upper bound: the model's own maximum).",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Class names, one per line: a timm classifier's labels (overriding its own), or the "
    "classes a CLIP model classifies zero-shot.",
)
@click.option(
    "--prompt",
    "prompts",
    multiple=True,
    help="Repeatable. sentence-transformers models: NAME=TEXT, a prompt requests can name "
    "(added to, or replacing, the model's own). CLIP models with --labels: a zero-shot template "
    'with {} for the label (templates are averaged; default "a photo of a {}.").',
)
@click.option(
    "--default-prompt-name",
    help="sentence-transformers: the prompt applied when a request names none.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="timm: load the architecture SOURCE's weights from this local file.",
)
@click.option(
    "--num-classes", type=click.IntRange(min=1), help="timm: the classifier's number of classes."
)
@click.option(
    "--token-embeddings",
    is_flag=True,
    help="sentence-transformers: also export each token's embedding before pooling (a second "
    "graph), served on /embed_all for late-interaction use.",
)
@click.option("--tensorrt", is_flag=True, help="Also compile TensorRT plans (needs a GPU).")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=TensorRTOptions.precision,
    show_default=True,
    help="TensorRT precision; normalisation, softmax and pooling stay in FP32.",
)
@click.option(
    "--min-batch", type=click.IntRange(min=1), default=TensorRTOptions.batch[0], show_default=True
)
@click.option(
    "--opt-batch",
    type=click.IntRange(min=1),
    default=TensorRTOptions.batch[1],
    show_default=True,
    help="TensorRT: batches up to this use a latency profile, larger ones a throughput profile.",
)
@click.option("--min-seq", type=click.IntRange(min=1), help="TensorRT text profiles (default 1).")
@click.option("--opt-seq", type=click.IntRange(min=1), help="TensorRT (default 128).")
@click.option(
    "--max-seq",
    type=click.IntRange(min=1),
    help="TensorRT (default: the model's max sequence length).",
)
@click.option(
    "--workspace-gb",
    type=click.FloatRange(min=0.1),
    default=TensorRTOptions.workspace_gb,
    show_default=True,
)
@click.option(
    "--opt-level", type=click.IntRange(0, 5), default=TensorRTOptions.opt_level, show_default=True
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TensorRT timing cache file, read and updated (speeds up later builds).",
)
@click.option(
    "--hardware-compat",
    type=click.Choice(HARDWARE_COMPAT),
    default=TensorRTOptions.hardware_compat,
    show_default=True,
)
@click.option(
    "--version-compatible", is_flag=True, help="TensorRT: let later TensorRT versions run the plan."
)
@click.option(
    "--int8",
    is_flag=True,
    help="Also build a verified int8 variant of an embedding model's text tower or a "
    "reranker (ONNX Runtime dynamic quantisation; MatMuls that lose too much stay f32), "
    "served with --precision int8.",
)
@click.option(
    "--int8-min-cosine",
    type=click.FloatRange(0.0, 1.0),
    default=Int8Thresholds.min_cosine,
    show_default=True,
    help="--int8: least cosine to the source library on every held-out text.",
)
@click.option(
    "--int8-min-overlap",
    type=click.FloatRange(0.0, 1.0),
    default=Int8Thresholds.min_overlap,
    show_default=True,
    help="--int8: least mean top-10 neighbour overlap with the source library (embeddings) or "
    "share of queries ranked alike (rerankers).",
)
@click.option("--force", is_flag=True, help="Replace the model if it is already built.")
@click.option("--skip-existing", is_flag=True, help="Do nothing if the model is already built.")
def build_command(
    source: str,
    name: str | None,
    library: str | None,
    task: str | None,
    engines: Path | S3Location,
    max_batch: int,
    max_seq_len: int | None,
    labels: Path | None,
    prompts: tuple[str, ...],
    default_prompt_name: str | None,
    checkpoint: Path | None,
    num_classes: int | None,
    token_embeddings: bool,
    tensorrt: bool,
    precision: str,
    min_batch: int,
    opt_batch: int,
    min_seq: int | None,
    opt_seq: int | None,
    max_seq: int | None,
    workspace_gb: float,
    opt_level: int,
    timing_cache: Path | None,
    hardware_compat: str,
    version_compatible: bool,
    int8: bool,
    int8_min_cosine: float,
    int8_min_overlap: float,
    force: bool,
    skip_existing: bool,
) -> None:
    """Export SOURCE (a Hugging Face model id, a local model directory, an open_clip or timm
    name) to an engine directory, verify it against the source library, and add it to the
    repository."""
    from builder import BuildError, build_model

    # SIGTERM (a deadline, `kill`, a pod stopping) unwinds like Ctrl-C, so the half-written
    # staging directory is removed rather than left for the next build to sweep.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from builder.publish import build_and_publish

    try:
        compile_options = None
        if tensorrt:
            compile_options = TensorRTOptions.for_ranges(
                (min_batch, opt_batch, max_batch),
                (min_seq, opt_seq, max_seq),
                max_seq_len,
                precision=precision,
                workspace_gb=workspace_gb,
                opt_level=opt_level,
                timing_cache=timing_cache,
                hardware_compat=hardware_compat,
                version_compatible=version_compatible,
            )
        options = BuildOptions(
            max_batch,
            max_seq_len,
            labels,
            prompts,
            checkpoint,
            num_classes,
            compile_options,
            default_prompt_name,
            task,
            Int8Thresholds(int8_min_cosine, int8_min_overlap) if int8 else None,
            token_embeddings=token_embeddings,
        )
        if isinstance(engines, S3Location):
            build_and_publish(
                source, engines, name, force, skip_existing, library=library, options=options
            )
            return
        build_model(
            source,
            engines,
            name=name,
            library=library,
            options=options,
            force=force,
            skip_existing=skip_existing,
        )
    except BuildError as error:
        raise click.ClickException(str(error)) from error
    except ImportError as error:
        raise click.ClickException(
            f"ingrain-build needs the build extras ({error.name} is missing): "
            "pip install 'ingrain-server[build]'"
        ) from error


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
