"""`python -m bench load ...` drives a running server; `python -m bench compare` measures the
server against in-process ONNX Runtime, sentence-transformers and infinity-emb in one run."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import orjson

from bench.load import WrkMissing, run_load, text_bodies, wrk_executable
from bench.sentences import sentences


def show(report: dict, as_json: bool, prefix: str = "") -> None:
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    for key, value in report.items():
        if isinstance(value, dict):
            show(value, False, f"{prefix}{key}.")
        else:
            click.echo(f"{prefix + key:<60} {value}")


def engines_option(what: str) -> Callable:
    return click.option(
        "--engines",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Repository to build {what} in (default: a temporary one).",
    )


serve_args_option = click.option(
    "--serve-arg",
    "serve_args",
    multiple=True,
    help="Extra ingrain-serve argument (repeatable), e.g. --serve-arg=--backend=onnxruntime.",
)


@click.group()
def main() -> None:
    """Benchmarks for ingrain-server (loopback or a URL you give; bounded in requests)."""


@main.command()
@click.option("--url", default="http://127.0.0.1:8686", show_default=True)
@click.option("--model", default="sentence-transformers/all-MiniLM-L6-v2", show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--per-request", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option(
    "--requests", "count", type=click.IntRange(1, 1_000_000), default=500, show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def load(url: str, model: str, concurrency: int, per_request: int, count: int, as_json: bool):
    """Send a bounded number of /embed_text requests and report throughput and latency."""
    bodies = text_bodies(model, sentences(), per_request, count)
    show(run_load(url, "/embed_text", bodies, concurrency).summary(), as_json)


@main.command()
@click.option(
    "--sentences", "count", type=click.IntRange(64, 100_000), default=2000, show_default=True
)
@engines_option("the demo model")
@serve_args_option
@click.option(
    "--infinity",
    type=click.Path(dir_okay=False, exists=True),
    help="The infinity_emb executable to compare with, in its own venv (default: the one on "
    "PATH; the report says so when there is none).",
)
@click.option(
    "--in-process-only", is_flag=True, help="Only the engines in-process; no server, no infinity."
)
@click.option(
    "--seconds",
    type=click.FloatRange(1, 600),
    default=10.0,
    show_default=True,
    help="How long wrk drives each server load.",
)
@click.option("--no-images", is_flag=True, help="Skip the image variant (tiny CLIP).")
@click.option(
    "--int8",
    is_flag=True,
    help="Build the demo model with its verified int8 variant (ingrain-build --int8) and add "
    "int8 rows: in-process, and the server with --precision int8.",
)
@click.option(
    "--packing",
    is_flag=True,
    help="Add padded vs packed on the same sentences, with the padding fraction of each: "
    "in-process and, unless --in-process-only, servers with and without --no-packing (what "
    "`bench packing` measures).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def compare(
    count: int,
    engines: Path | None,
    serve_args: tuple[str, ...],
    infinity: str | None,
    in_process_only: bool,
    seconds: float,
    no_images: bool,
    int8: bool,
    packing: bool,
    as_json: bool,
):
    """The engines in-process (sentence-transformers fp32/bf16, ONNX Runtime, OpenVINO f32/bf16),
    then the server (driven by wrk) vs its engine in-process and infinity-emb, and the same for
    a tiny CLIP's image tower."""
    from bench.compare import compare as run

    try:
        report = run(
            count,
            engines,
            list(serve_args),
            infinity,
            not in_process_only,
            seconds,
            not no_images,
            int8,
            packing,
        )
    except WrkMissing as error:
        raise click.ClickException(str(error)) from None
    show(report, as_json)


@main.command()
@click.option("--model", default="sentence-transformers/all-MiniLM-L6-v2", show_default=True)
@click.option("--per-request", type=click.IntRange(1, 1024), multiple=True, default=(1, 32))
@click.option("--rounds", type=click.IntRange(1, 100), default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def decode(model: str, per_request: tuple[int, ...], rounds: int, as_json: bool):
    """Microseconds to decode one /embed_text body in-process: the routes' way (orjson, then
    spelling normalisation and validation) beside orjson alone and msgspec from bytes."""
    from bench.decode import decode as run

    show(run(model, list(per_request), rounds), as_json)


@main.command()
@engines_option("the tiny model")
@serve_args_option
@click.option("--seconds", type=click.FloatRange(1, 600), default=8.0, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=32, show_default=True)
@click.option("--per-request", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option(
    "--code",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    multiple=True,
    help="A checkout of ingrain-server to serve from (repeatable; each runs with it first on "
    "PYTHONPATH, all driven in turn each round, to compare before and after a change). "
    "Default: the code this runs.",
)
@click.option(
    "--model",
    help="A text model already built in --engines to serve instead of the tiny one (to see "
    "the overhead beside a real engine).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def overhead(
    engines: Path | None,
    serve_args: tuple[str, ...],
    seconds: float,
    rounds: int,
    concurrency: int,
    per_request: int,
    code: tuple[Path, ...],
    model: str | None,
    as_json: bool,
):
    """The server's CPU microseconds per request on a tiny model (the fixed work that is not
    the engine), from its processes' CPU time, beside the engine's own time; wrk drives it."""
    from bench.overhead import overhead as run

    try:
        report = run(
            engines, list(serve_args), seconds, rounds, concurrency, per_request, list(code), model
        )
    except WrkMissing as error:
        raise click.ClickException(str(error)) from None
    show(report, as_json)


@main.command()
@click.option(
    "--sentences", "count", type=click.IntRange(64, 100_000), default=512, show_default=True
)
@engines_option("the demo model")
@serve_args_option
@click.option("--in-process-only", is_flag=True, help="Only the in-process figures; no server.")
@click.option(
    "--seconds",
    type=click.FloatRange(1, 600),
    default=10.0,
    show_default=True,
    help="How long wrk drives each server load.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Passes over the sentences in-process.",
)
@click.option(
    "--pairs",
    is_flag=True,
    help="Also a MiniLM-sized cross-encoder in-process (query, sentence pairs).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def packing(
    count: int,
    engines: Path | None,
    serve_args: tuple[str, ...],
    in_process_only: bool,
    seconds: float,
    rounds: int,
    pairs: bool,
    as_json: bool,
):
    """Packed vs padded text execution: in-process (random-arrival and sorted groups of 32, ONNX
    Runtime and OpenVINO f32) and through the server (32 x 1 and 8 x 32, with and without
    --no-packing), with the padding fraction of each."""
    from bench.packing import compare_packing

    engines = engines or Path(tempfile.mkdtemp(prefix="ingrain-bench-"))
    if not in_process_only:
        try:
            wrk_executable()
        except WrkMissing as error:
            raise click.ClickException(str(error)) from None
    show(
        compare_packing(
            count, engines, list(serve_args), not in_process_only, seconds, rounds, pairs
        ),
        as_json,
    )


@main.command()
@click.option(
    "--sentences", "count", type=click.IntRange(66, 100_000), default=1320, show_default=True
)
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True)
@engines_option("the cross-encoder")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rerank(count: int, concurrency: int, engines: Path | None, as_json: bool):
    """/rerank pairs/s against CrossEncoder.predict in-process, one run."""
    from bench.rerank import rerank as run

    show(run(count, engines, concurrency), as_json)


@main.command()
@engines_option("the cross-encoder")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def fairness(engines: Path | None, as_json: bool):
    """One-document /rerank requests beside one of the maximum documents (their latency in
    executions), and the time to the 503 of a request sent to a full queue."""
    from bench.fairness import run

    show(run(engines), as_json)


@main.command()
@click.option("--minutes", type=click.FloatRange(0.1, 600), default=10.0, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=16, show_default=True)
@engines_option("the models")
@click.option(
    "--backend",
    type=click.Choice(["auto", "openvino", "onnxruntime"]),
    default="auto",
    show_default=True,
    help="The server's backend (run the soak once on each CPU backend).",
)
@click.option(
    "--s3",
    "republish_minutes",
    type=click.FloatRange(0.1, 60),
    help="The mixed soak instead: the server on a moto S3 repository, under embeddings, "
    "OpenAI embeddings, max-documents and one-document /rerank, republishing the embedding "
    "model every this many minutes.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def soak(
    minutes: float,
    concurrency: int,
    engines: Path | None,
    backend: str,
    republish_minutes: float | None,
    as_json: bool,
):
    """Mixed load on a 2-worker server at saturation; 5xx, lost requests and memory growth."""
    from bench.soak import mixed_soak
    from bench.soak import soak as run

    if republish_minutes is not None:
        show(mixed_soak(minutes, republish_minutes, engines), as_json)
        return
    show(run(minutes, concurrency, engines, backend), as_json)


if __name__ == "__main__":
    main()
