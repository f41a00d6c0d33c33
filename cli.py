"""The `ingrain` command group; `ingrain-build` and `ingrain-serve` are its build and serve."""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.core import ParameterSource

# The settings' dataclasses are the one source of every default; the options below read them.
from api.on_demand import BuildSettings
from api.settings import Limits, ReadinessLimits, ServerSettings
from builder.command import build_command, engines_option
from runtime.backends import BACKENDS, openvino_unavailable, select
from runtime.batching import BatchingConfig
from runtime.config import CACHE_IN_ENGINE, CACHE_OFF, RuntimeConfig
from runtime.config import PRECISIONS as SERVE_PRECISIONS
from runtime.preprocessing.fetch import FetchLimits
from runtime.repository import ModelNotFound, Repository
from runtime.repository.s3 import ObjectStore, S3Location, StoreError
from runtime.repository.s3_cache import RemoteSettings, S3Cache, default_cache_dir


@click.group()
def main() -> None:
    """Build embedding and classification models into engines and serve them over HTTP."""


main.add_command(build_command)


@main.command("serve")
@engines_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8686,
    show_default=True,
    help="The inference port.",
)
@click.option(
    "--model-port",
    default="8687",
    show_default=True,
    help='The model-management port the ingrain client calls (the same app answers it), or "none".',
)
@click.option(
    "--max-loaded-models",
    type=click.IntRange(min=1),
    default=ServerSettings.max_loaded_models,
    show_default=True,
    help="Most models in the loaded set; /load_model beyond it is refused.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="gunicorn worker processes; each holds its own copy of every model.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Request threads per worker. They mostly wait on the batcher; the batcher can only "
    "merge requests that are in it, so this caps the batch a worker can form.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=RuntimeConfig.backend,
    show_default=True,
    help="auto: TensorRT where the model has a plan for this GPU, else OpenVINO, else ONNX "
    "Runtime.",
)
@click.option(
    "--precision",
    type=click.Choice(SERVE_PRECISIONS),
    default=RuntimeConfig.precision,
    show_default=True,
    help="CPU precision. auto: bf16 where the CPU reports BF16 and ingrain-build verified it for "
    "the model, else f32.",
)
@click.option(
    "--model-precision",
    "model_precisions",
    multiple=True,
    metavar="NAME=PRECISION",
    help="Precision for one model, overriding --precision (repeatable).",
)
@click.option(
    "--intra-op-threads",
    type=click.IntRange(min=0),
    help="Inference threads per worker (default: cores / workers, so workers never "
    "oversubscribe the cores).",
)
@click.option(
    "--compile-cache",
    default=CACHE_IN_ENGINE,
    show_default=True,
    envvar="INGRAIN_COMPILE_CACHE",
    help=f"Where OpenVINO keeps compiled models: {CACHE_IN_ENGINE!r} (a .ov-cache folder in each "
    f"engine directory), {CACHE_OFF!r}, or a writable directory (for read-only engines).",
)
@click.option(
    "--preload",
    multiple=True,
    envvar="INGRAIN_PRELOAD",
    help="Load and warm up this model in every worker at start (repeatable; the variable "
    "holds names separated by spaces).",
)
@click.option(
    "--default-model",
    "default_models",
    multiple=True,
    envvar="INGRAIN_DEFAULT_MODELS",
    help="The model that serves Text Embeddings Inference requests (which name no model): "
    "one per kind (embedding, sparse embedding, reranker, text classifier); the first also "
    "serves POST /, /info, /tokenize and /decode. Repeatable; the variable holds names "
    "separated by spaces. Without it, the only loaded model of the kind a route needs.",
)
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    default=120,
    show_default=True,
    help="Seconds a worker may stay silent before gunicorn restarts it.",
)
@click.option(
    "--read-timeout",
    type=click.FloatRange(min=0.1),
    default=Limits.read_timeout_s,
    show_default=True,
    envvar="INGRAIN_READ_TIMEOUT",
    help="Seconds a client has to send a whole request (headers and body); slower ones are "
    "cut off.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=Limits.max_connections,
    show_default=True,
    envvar="INGRAIN_MAX_CONNECTIONS",
    help="Most open client connections per worker; more wait to be accepted.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=Limits.max_body_bytes,
    show_default=True,
    envvar="INGRAIN_MAX_BODY_BYTES",
)
@click.option(
    "--max-items",
    type=click.IntRange(min=1),
    default=Limits.max_items,
    show_default=True,
    envvar="INGRAIN_MAX_ITEMS",
    help="Most texts or images in one request.",
)
@click.option(
    "--max-documents",
    type=click.IntRange(min=1),
    default=Limits.max_documents,
    show_default=True,
    envvar="INGRAIN_MAX_DOCUMENTS",
    help="Most texts one /rerank or /v1/rerank request ranks.",
)
@click.option(
    "--max-rerank-chars",
    type=click.IntRange(min=1),
    default=Limits.max_rerank_chars,
    show_default=True,
    envvar="INGRAIN_MAX_RERANK_CHARS",
    help="Most characters of the query and texts of one rerank request together.",
)
@click.option(
    "--max-text-chars",
    type=click.IntRange(min=1),
    default=Limits.max_text_chars,
    show_default=True,
    envvar="INGRAIN_MAX_TEXT_CHARS",
    help="Most characters in one text.",
)
@click.option(
    "--max-image-bytes",
    type=click.IntRange(min=1),
    default=FetchLimits.max_bytes,
    show_default=True,
    envvar="INGRAIN_MAX_IMAGE_BYTES",
    help="Most bytes in one image (downloaded or inline).",
)
@click.option(
    "--max-image-pixels",
    type=click.IntRange(min=1),
    default=RuntimeConfig.max_image_pixels,
    show_default=True,
    envvar="INGRAIN_MAX_IMAGE_PIXELS",
    help="Most pixels in one image; larger ones are refused before decoding.",
)
@click.option(
    "--download-timeout",
    type=click.FloatRange(min=0.1),
    default=FetchLimits.timeout_s,
    show_default=True,
    envvar="INGRAIN_DOWNLOAD_TIMEOUT",
    help="Seconds one request's image downloads may take together, redirects included.",
)
@click.option(
    "--max-redirects",
    type=click.IntRange(min=0),
    default=FetchLimits.max_redirects,
    show_default=True,
    envvar="INGRAIN_MAX_REDIRECTS",
)
@click.option(
    "--allow-private-addresses",
    is_flag=True,
    envvar="INGRAIN_ALLOW_PRIVATE_ADDRESSES",
    help="Let image URLs reach loopback and private networks (refused by default; link-local "
    "and cloud metadata addresses are always refused).",
)
@click.option(
    "--max-batch-delay-ms",
    type=click.FloatRange(min=0),
    default=BatchingConfig.max_delay_s * 1000,
    show_default=True,
    envvar="INGRAIN_MAX_BATCH_DELAY_MS",
    help="How long a partial batch may wait for more requests (never when the engine is idle "
    "and one request is queued).",
)
@click.option(
    "--max-batch-tokens",
    type=click.IntRange(min=1),
    default=BatchingConfig.max_tokens,
    show_default=True,
    envvar="INGRAIN_MAX_BATCH_TOKENS",
    help="Most padded tokens (texts x longest) in one text execution.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=BatchingConfig.max_queue,
    show_default=True,
    envvar="INGRAIN_MAX_QUEUE",
    help="Most items waiting per model tower and worker; beyond it requests get 503.",
)
@click.option(
    "--max-queue-wait-ms",
    type=click.FloatRange(min=0),
    default=BatchingConfig.max_queue_wait_s * 1000,
    show_default=True,
    envvar="INGRAIN_MAX_QUEUE_WAIT_MS",
    help="A request still queued after this long is dropped before execution with 503 (its "
    "client has most likely given up; 0: never).",
)
@click.option(
    "--ready-max-execution-s",
    type=click.FloatRange(min=0.001),
    default=ReadinessLimits.max_execution_s,
    show_default=True,
    envvar="INGRAIN_READY_MAX_EXECUTION_S",
    help="/ready: an execution running longer than this marks its model not ready (stuck).",
)
@click.option(
    "--ready-max-failures",
    type=click.IntRange(min=1),
    default=ReadinessLimits.max_failed_executions,
    show_default=True,
    envvar="INGRAIN_READY_MAX_FAILURES",
    help="/ready: this many failed executions in a row mark a model not ready until a probe "
    "execution succeeds.",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    envvar="INGRAIN_API_KEYS",
    help="Require Authorization: Bearer KEY on every route but /health (repeatable; the "
    "variable holds keys separated by spaces).",
)
@click.option(
    "--admin-key",
    "admin_keys",
    multiple=True,
    envvar="INGRAIN_ADMIN_KEYS",
    help="Require one of these keys (instead of an API key) on /load_model, /unload_model and "
    "/delete_model; they also open every other route.",
)
@click.option(
    "--model-host",
    help="Address for the model port (default: --host), e.g. 127.0.0.1 to keep management "
    "off the network while --host 0.0.0.0 serves inference.",
)
@click.option(
    "--management-on-model-port-only",
    is_flag=True,
    envvar="INGRAIN_MANAGEMENT_ON_MODEL_PORT_ONLY",
    help="Answer the management routes on --model-port only (the inference port 404s them).",
)
@click.option(
    "--build-on-load/--no-build-on-load",
    default=True,
    show_default=True,
    envvar="INGRAIN_BUILD_ON_LOAD",
    help="Let /load_model build a Hugging Face Hub model that is not in the repository (one "
    "build at a time per server).",
)
@click.option(
    "--build-timeout",
    type=click.FloatRange(min=1),
    default=BuildSettings.timeout_s,
    show_default=True,
    envvar="INGRAIN_BUILD_TIMEOUT",
    help="Seconds an on-demand build may take (waiting included) before /load_model gets a 504.",
)
@click.option(
    "--max-queued-builds",
    type=click.IntRange(min=0),
    default=BuildSettings.max_waiting,
    show_default=True,
    envvar="INGRAIN_MAX_QUEUED_BUILDS",
    help="On-demand builds that may wait for the running one; more get a 503.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    envvar="INGRAIN_CORS_ORIGINS",
    help="Allow browsers on this origin to call the API (repeatable; '*' for any). Off by default.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="INGRAIN_CACHE_DIR",
    help="s3:// engines: where models are fetched to and served from (default: "
    "~/.cache/ingrain/engines/BUCKET/PREFIX).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0),
    default=RemoteSettings.poll_interval_s,
    show_default=True,
    envvar="INGRAIN_POLL_INTERVAL",
    help="s3:// engines: seconds between checks for newly published versions (0: only at "
    "start and on /load_model).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Access-log lines as key=value text or as JSON lines.",
)
def serve_command(
    engines: Path | S3Location,
    host: str,
    port: int,
    model_port: str,
    max_loaded_models: int,
    workers: int,
    threads: int,
    backend: str,
    precision: str,
    model_precisions: tuple[str, ...],
    intra_op_threads: int | None,
    compile_cache: str,
    preload: tuple[str, ...],
    default_models: tuple[str, ...],
    timeout: int,
    read_timeout: float,
    max_connections: int,
    max_body_bytes: int,
    max_items: int,
    max_documents: int,
    max_rerank_chars: int,
    max_text_chars: int,
    max_image_bytes: int,
    max_image_pixels: int,
    download_timeout: float,
    max_redirects: int,
    allow_private_addresses: bool,
    max_batch_delay_ms: float,
    max_batch_tokens: int,
    max_queue: int,
    max_queue_wait_ms: float,
    ready_max_execution_s: float,
    ready_max_failures: int,
    api_keys: tuple[str, ...],
    admin_keys: tuple[str, ...],
    model_host: str | None,
    management_on_model_port_only: bool,
    build_on_load: bool,
    build_timeout: float,
    max_queued_builds: int,
    cors_origins: tuple[str, ...],
    cache_dir: Path | None,
    poll_interval: float,
    log_format: str,
) -> None:
    """Serve the models in the engine repository with the ingrain HTTP API."""
    from api.logs import configure_logging
    from api.server import PortUnavailable, serve

    if model_port.lower() == "none":
        model_port_number = None
    elif model_port.isdigit() and int(model_port) != port:
        model_port_number = int(model_port)  # its range is checked with the settings
    else:
        raise click.BadParameter(
            'a port number other than --port, or "none"', param_hint="--model-port"
        )
    documents_given = click.get_current_context().get_parameter_source("max_documents")
    if max_documents + 1 > max_queue and documents_given is ParameterSource.DEFAULT:
        max_documents = max_queue - 1  # the default follows a smaller queue
    remote = None
    if isinstance(engines, S3Location):
        remote = RemoteSettings(engines, poll_interval)
        engines = fetch_engines(engines, cache_dir or default_cache_dir(engines))
    repository = Repository(engines)
    model_precision = parse_model_precisions(model_precisions)
    named = [("--preload", name) for name in preload]
    named += [("--default-model", name) for name in default_models]
    for flag, name in named + [("--model-precision", name) for name, _ in model_precision]:
        try:
            repository.find(name)
        except ModelNotFound:
            raise click.ClickException(
                f"{flag} {name}: not in {engines}; build it with: ingrain-build {name}"
            ) from None
    check_default_models(repository, default_models)
    configure_logging()
    if intra_op_threads is None:
        intra_op_threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        runtime = RuntimeConfig(
            backend=backend,
            precision=precision,
            model_precision=model_precision,
            threads=intra_op_threads,
            compile_cache=compile_cache,
            batching=BatchingConfig(
                max_delay_s=max_batch_delay_ms / 1000.0,
                max_tokens=max_batch_tokens,
                max_queue=max_queue,
                max_queue_wait_s=max_queue_wait_ms / 1000.0 if max_queue_wait_ms else None,
            ),
            fetch=FetchLimits(
                max_bytes=max_image_bytes,
                timeout_s=download_timeout,
                max_redirects=max_redirects,
                allow_private=allow_private_addresses,
            ),
            max_image_pixels=max_image_pixels,
        )
        settings = ServerSettings(
            engines=engines,
            runtime=runtime,
            preload=preload,
            default_models=default_models,
            json_logs=log_format == "json",
            max_loaded_models=max_loaded_models,
            api_keys=api_keys,
            admin_keys=admin_keys,
            cors_origins=cors_origins,
            model_port=model_port_number,
            management_on_model_port_only=management_on_model_port_only,
            builds=BuildSettings(build_on_load and not remote, build_timeout, max_queued_builds),
            limits=Limits(
                max_body_bytes=max_body_bytes,
                max_items=max_items,
                max_documents=max_documents,
                max_rerank_chars=max_rerank_chars,
                max_text_chars=max_text_chars,
                read_timeout_s=read_timeout,
                max_connections=max_connections,
            ),
            readiness=ReadinessLimits(ready_max_execution_s, ready_max_failures),
            remote=remote,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if not repository.entries():
        click.echo(
            f"warning: no models in {engines}; build one with: ingrain-build SOURCE "
            "(scripts/serve-demo.sh builds and serves the demo model)",
            err=True,
        )
    try:
        serve(settings, host, port, workers, threads, timeout, model_host)
    except PortUnavailable as error:
        raise click.ClickException(str(error)) from None


def fetch_engines(location: S3Location, cache_dir: Path) -> Path:
    """Bring the cache of `location` up to date before serving it. A model that cannot be
    fetched keeps its cached version (logged); an unreachable store is fatal only with an
    empty cache."""
    from api.logs import configure_logging

    configure_logging()
    try:
        S3Cache(ObjectStore(location), cache_dir).sync_all()
    except StoreError as error:
        if not Repository(cache_dir).entries():
            raise click.ClickException(f"{error} (and {cache_dir} holds no models)") from None
        click.echo(f"warning: serving what {cache_dir} holds: {error}", err=True)
    return cache_dir


def check_default_models(repository: Repository, names: tuple[str, ...]) -> None:
    """Each --default-model serves one kind of Text Embeddings Inference request."""
    from api.tei_kinds import KINDS, kind_of

    chosen: dict[str, str] = {}
    for name in names:
        kind = kind_of(repository.find(name).manifest)
        if kind is None:
            raise click.BadParameter(
                f"{name} is not a text model; TEI serves {', '.join(KINDS)} models",
                param_hint="--default-model",
            )
        if kind in chosen:
            raise click.BadParameter(
                f"{chosen[kind]} and {name} are both {kind} models; give one per kind",
                param_hint="--default-model",
            )
        chosen[kind] = name


def parse_model_precisions(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        name, _, precision = value.rpartition("=")
        if not name or precision not in SERVE_PRECISIONS:
            raise click.BadParameter(
                f"{value!r}: expected NAME=PRECISION with PRECISION one of "
                f"{', '.join(SERVE_PRECISIONS)}",
                param_hint="--model-precision",
            )
        pairs.append((name, precision))
    return tuple(pairs)


@main.command("list")
@engines_option
def list_command(engines: Path | S3Location) -> None:
    """List the models in the engine repository, and the backend/precision each tower runs on
    here with ingrain-serve's defaults."""
    try:
        entries = (
            ObjectStore(engines).entries()
            if isinstance(engines, S3Location)
            else Repository(engines).entries()
        )
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    if not entries:
        click.echo(f"No models in {engines}. Build one with: ingrain-build SOURCE")
        return
    rows = [("NAME", "LIBRARY", "TOWERS", "DIMS", "BACKENDS", "RUNS", "SIZE")]
    cpu = ["onnxruntime"] + (["openvino"] if openvino_unavailable() is None else [])
    for entry in entries:
        towers = entry.manifest.towers
        backends = set(cpu) | {"tensorrt" for tower in towers.values() if tower.plan}
        # What `ingrain-serve` with its defaults would run each tower on, on this host.
        runs = [select(tower, RuntimeConfig(), entry.name) for tower in towers.values()]
        rows.append(
            (
                entry.name,
                entry.manifest.library,
                ",".join(towers),
                ",".join(str(tower.dim) for tower in towers.values()),
                ",".join(sorted(backends)),
                ",".join(f"{run.backend}/{run.precision}" for run in runs),
                f"{entry.size_bytes() / 1e6:.1f} MB",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@main.command("remove")
@click.argument("name")
@engines_option
def remove_command(name: str, engines: Path | S3Location) -> None:
    """Delete the model NAME from the engine repository."""
    if isinstance(engines, S3Location):
        try:
            published = ObjectStore(engines).remove(name)
        except StoreError as error:
            raise click.ClickException(str(error)) from None
        if published is None:
            raise click.ClickException(f"{name!r} is not in {engines}; see: ingrain list")
        click.echo(f"Removed {name} ({engines}/{published.slug})")
        return
    try:
        entry = Repository(engines).remove(name)
    except ModelNotFound:
        raise click.ClickException(f"{name!r} is not in {engines}; see: ingrain list") from None
    click.echo(f"Removed {name} ({entry.directory})")


if __name__ == "__main__":
    main()
