"""Every `ingrain serve` setting, declared once: its flag, environment variable, default, help,
check (its click type), and the field of the frozen settings it fills. `cli.py` builds the
command's options from this table, and `settings` builds the settings from their values.

A setting's default is its settings field's default, so the two never disagree; the flags in
milliseconds convert to the fields in seconds. Checks across settings (--max-items within
--max-queue, say) are the settings' own (api.settings.ServerSettings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import click

from api.routes.tei_kinds import KINDS, kind_of
from api.services.on_demand import BuildSettings
from api.settings import Limits, ReadinessLimits, ServerSettings
from runtime.backends import BACKENDS
from runtime.batching import BatchingConfig
from runtime.config import CACHE_IN_ENGINE, CACHE_OFF, RuntimeConfig
from runtime.config import PRECISIONS as SERVE_PRECISIONS
from runtime.preprocessing.fetch import FetchLimits
from runtime.repository import Repository
from runtime.repository.s3_cache import RemoteSettings

FROM_FIELD: Any = object()  # the option's default is its settings field's


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    # The settings field it fills, as (settings class, field name); None: read by `serve`.
    field: tuple[type, str] | None = None
    type: click.ParamType | None = None
    default: Any = FROM_FIELD
    env: str | None = None
    # The option's value as the field's (milliseconds to seconds, say).
    convert: Callable[[Any], Any] | None = None
    # The field's default as the option's (the inverse of `convert`).
    shown: Callable[[Any], Any] | None = None
    multiple: bool = False
    is_flag: bool = False
    # The parameter's name where it is not the flag's (`--api-key` fills `api_keys`).
    dest: str | None = None
    metavar: str | None = None

    @property
    def name(self) -> str:
        return self.dest or self.flag.split("/")[0].lstrip("-").replace("-", "_")

    def default_value(self) -> Any:
        if self.default is not FROM_FIELD:
            return self.default
        assert self.field is not None, f"{self.flag} needs a default"
        cls, name = self.field
        (found,) = [item for item in fields(cls) if item.name == name]
        assert found.default is not MISSING, f"{self.flag}: {cls.__name__}.{name} has no default"
        return self.shown(found.default) if self.shown else found.default

    def click_option(self) -> Callable:
        default = self.default_value()
        return click.option(
            self.flag,
            self.name,
            type=self.type,
            default=None if self.multiple else default,
            show_default=not (default is None or default is False or default == ()),
            envvar=self.env,
            help=self.help,
            multiple=self.multiple,
            is_flag=self.is_flag or None,
            metavar=self.metavar,
        )


def _seconds(milliseconds: float) -> float:
    return milliseconds / 1000.0


def _seconds_or_never(milliseconds: float) -> float | None:
    return milliseconds / 1000.0 if milliseconds else None


def _milliseconds(seconds: float | None) -> float:
    return seconds * 1000.0 if seconds else 0.0


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


def check_default_models(repository: Repository, names: tuple[str, ...]) -> None:
    """Each --default-model is a text model, and serves one kind of Text Embeddings Inference
    request (checked against the repository, so after the models are found)."""
    chosen: dict[str, str] = {}
    for name in names:
        if not repository.contains(name):  # unreadable in object storage: reported, skipped
            continue
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


def _at_least(minimum: int) -> click.IntRange:
    return click.IntRange(min=minimum)


OPTIONS = (
    Option("--host", "Address to listen on.", default="127.0.0.1"),
    Option("--port", "The inference port.", type=click.IntRange(1, 65535), default=8686),
    Option(
        "--model-port",
        'The model-management port the ingrain client calls (the same app answers it), or "none".',
        (ServerSettings, "model_port"),
        default="8687",
    ),
    Option(
        "--max-loaded-models",
        "Most models in the loaded set; /load_model beyond it is refused.",
        (ServerSettings, "max_loaded_models"),
        _at_least(1),
    ),
    Option(
        "--workers",
        "gunicorn worker processes; each holds its own copy of every model.",
        type=_at_least(1),
        default=1,
    ),
    Option(
        "--threads",
        "Request threads per worker. They mostly wait on the batcher; the batcher can only "
        "merge requests that are in it, so this caps the batch a worker can form.",
        type=_at_least(1),
        default=64,
    ),
    Option(
        "--backend",
        "auto: TensorRT where the model has a plan for this GPU, else the CPU backend and "
        "lossless precision measured fastest for each tower on this host (ONNX Runtime or "
        "OpenVINO, f32 or a verified bf16; cached, see --state-dir).",
        (RuntimeConfig, "backend"),
        click.Choice(BACKENDS),
    ),
    Option(
        "--precision",
        "CPU precision. auto: the faster of f32 and bf16 (where the CPU reports BF16 and "
        "ingrain-build verified it for the model), as measured here. int8: the model's verified "
        "int8 variant (ingrain-build --int8), on ONNX Runtime; never chosen by auto.",
        (RuntimeConfig, "precision"),
        click.Choice(SERVE_PRECISIONS),
    ),
    Option(
        "--model-precision",
        "Precision for one model, overriding --precision (repeatable).",
        (RuntimeConfig, "model_precision"),
        multiple=True,
        dest="model_precisions",
        metavar="NAME=PRECISION",
        convert=parse_model_precisions,
    ),
    Option(
        "--intra-op-threads",
        "Inference threads per worker (default: cores / workers, so workers never "
        "oversubscribe the cores).",
        (RuntimeConfig, "threads"),
        click.IntRange(min=0),
        default=None,
    ),
    Option(
        "--compile-cache",
        f"Where OpenVINO keeps compiled models: {CACHE_IN_ENGINE!r} (a .ov-cache folder in each "
        f"engine directory), {CACHE_OFF!r}, or a writable directory (for read-only engines).",
        (RuntimeConfig, "compile_cache"),
        env="INGRAIN_COMPILE_CACHE",
    ),
    Option(
        "--state-dir",
        f"Where `--backend auto` keeps the backend choice it measured per tower and host: "
        f"{CACHE_IN_ENGINE!r} (a .ingrain-state folder in each engine directory), {CACHE_OFF!r} "
        "(measure at every load), or a writable directory.",
        (RuntimeConfig, "state_dir"),
        env="INGRAIN_STATE_DIR",
    ),
    Option(
        "--preload",
        "Load and warm up this model in every worker at start (repeatable; the variable holds "
        "names separated by spaces).",
        (ServerSettings, "preload"),
        multiple=True,
        env="INGRAIN_PRELOAD",
    ),
    Option(
        "--default-model",
        "The model that serves Text Embeddings Inference requests (which name no model): one per "
        "kind (embedding, sparse embedding, reranker, text classifier); the first also serves "
        "POST /, /info, /tokenize and /decode. Repeatable; the variable holds names separated by "
        "spaces. Without it, the only loaded model of the kind a route needs.",
        (ServerSettings, "default_models"),
        multiple=True,
        env="INGRAIN_DEFAULT_MODELS",
        dest="default_models",
    ),
    Option(
        "--timeout",
        "Seconds a worker may stay silent before gunicorn restarts it.",
        type=_at_least(1),
        default=120,
    ),
    Option(
        "--read-timeout",
        "Seconds a client has to send a whole request (headers and body); slower ones are cut off.",
        (Limits, "read_timeout_s"),
        click.FloatRange(min=0.1),
        env="INGRAIN_READ_TIMEOUT",
    ),
    Option(
        "--max-connections",
        "Most open client connections per worker; more wait to be accepted.",
        (Limits, "max_connections"),
        _at_least(1),
        env="INGRAIN_MAX_CONNECTIONS",
    ),
    Option(
        "--max-body-bytes",
        "Most bytes in one request body.",
        (Limits, "max_body_bytes"),
        _at_least(1),
        env="INGRAIN_MAX_BODY_BYTES",
    ),
    Option(
        "--max-items",
        "Most texts or images in one request.",
        (Limits, "max_items"),
        _at_least(1),
        env="INGRAIN_MAX_ITEMS",
    ),
    Option(
        "--max-documents",
        "Most texts one /rerank or /v1/rerank request ranks.",
        (Limits, "max_documents"),
        _at_least(1),
        env="INGRAIN_MAX_DOCUMENTS",
    ),
    Option(
        "--max-rerank-chars",
        "Most characters of the query and texts of one rerank request together.",
        (Limits, "max_rerank_chars"),
        _at_least(1),
        env="INGRAIN_MAX_RERANK_CHARS",
    ),
    Option(
        "--max-text-chars",
        "Most characters in one text.",
        (Limits, "max_text_chars"),
        _at_least(1),
        env="INGRAIN_MAX_TEXT_CHARS",
    ),
    Option(
        "--max-image-bytes",
        "Most bytes in one image (downloaded or inline).",
        (FetchLimits, "max_bytes"),
        _at_least(1),
        env="INGRAIN_MAX_IMAGE_BYTES",
    ),
    Option(
        "--max-image-pixels",
        "Most pixels in one image; larger ones are refused before decoding.",
        (RuntimeConfig, "max_image_pixels"),
        _at_least(1),
        env="INGRAIN_MAX_IMAGE_PIXELS",
    ),
    Option(
        "--download-timeout",
        "Seconds one request's image downloads may take together, redirects included.",
        (FetchLimits, "timeout_s"),
        click.FloatRange(min=0.1),
        env="INGRAIN_DOWNLOAD_TIMEOUT",
    ),
    Option(
        "--max-redirects",
        "Most redirects one image download follows.",
        (FetchLimits, "max_redirects"),
        click.IntRange(min=0),
        env="INGRAIN_MAX_REDIRECTS",
    ),
    Option(
        "--allow-private-addresses",
        "Let image URLs reach loopback and private networks (refused by default; link-local "
        "and cloud metadata addresses are always refused).",
        (FetchLimits, "allow_private"),
        is_flag=True,
        env="INGRAIN_ALLOW_PRIVATE_ADDRESSES",
    ),
    Option(
        "--max-batch-delay-ms",
        "How long a partial batch may wait for more requests (never when the engine is idle "
        "and one request is queued).",
        (BatchingConfig, "max_delay_s"),
        click.FloatRange(min=0),
        env="INGRAIN_MAX_BATCH_DELAY_MS",
        convert=_seconds,
        shown=_milliseconds,
    ),
    Option(
        "--max-batch-tokens",
        "Most padded tokens (texts x longest) in one text execution.",
        (BatchingConfig, "max_tokens"),
        _at_least(1),
        env="INGRAIN_MAX_BATCH_TOKENS",
    ),
    Option(
        "--packing/--no-packing",
        "Run towers that have a packed graph (text, CLIP text, cross-encoder) packed: several "
        "texts or pairs per row, no padding between them; --no-packing serves their padded graph.",
        (RuntimeConfig, "packing"),
        is_flag=True,
        env="INGRAIN_PACKING",
    ),
    Option(
        "--max-queue",
        "Most items waiting per model tower and worker; beyond it requests get 503.",
        (BatchingConfig, "max_queue"),
        _at_least(1),
        env="INGRAIN_MAX_QUEUE",
    ),
    Option(
        "--max-queue-wait-ms",
        "A request none of whose items has begun executing after this long is answered 503 "
        "at once, wherever it waits in the queue, and never executed (0: wait forever).",
        (BatchingConfig, "max_queue_wait_s"),
        click.FloatRange(min=0),
        env="INGRAIN_MAX_QUEUE_WAIT_MS",
        convert=_seconds_or_never,
        shown=_milliseconds,
    ),
    Option(
        "--ready-max-execution-s",
        "/ready: an execution running longer than this marks its model not ready (stuck).",
        (ReadinessLimits, "max_execution_s"),
        click.FloatRange(min=0.001),
        env="INGRAIN_READY_MAX_EXECUTION_S",
    ),
    Option(
        "--ready-max-failures",
        "/ready: this many failed executions in a row mark a model not ready until a probe "
        "execution succeeds.",
        (ReadinessLimits, "max_failed_executions"),
        _at_least(1),
        env="INGRAIN_READY_MAX_FAILURES",
    ),
    Option(
        "--api-key",
        "Require Authorization: Bearer KEY on every route but /health (repeatable; the "
        "variable holds keys separated by spaces).",
        (ServerSettings, "api_keys"),
        multiple=True,
        dest="api_keys",
        env="INGRAIN_API_KEYS",
    ),
    Option(
        "--admin-key",
        "Require one of these keys (instead of an API key) on /load_model, /unload_model and "
        "/delete_model; they also open every other route.",
        (ServerSettings, "admin_keys"),
        multiple=True,
        dest="admin_keys",
        env="INGRAIN_ADMIN_KEYS",
    ),
    Option(
        "--model-host",
        "Address for the model port (default: --host), e.g. 127.0.0.1 to keep management off "
        "the network while --host 0.0.0.0 serves inference.",
        default=None,
    ),
    Option(
        "--management-on-model-port-only",
        "Answer the management routes on --model-port only (the inference port 404s them).",
        (ServerSettings, "management_on_model_port_only"),
        is_flag=True,
        env="INGRAIN_MANAGEMENT_ON_MODEL_PORT_ONLY",
    ),
    Option(
        "--build-on-load/--no-build-on-load",
        "Let /load_model build a Hugging Face Hub model that is not in the repository (one "
        "build at a time per server).",
        (BuildSettings, "enabled"),
        env="INGRAIN_BUILD_ON_LOAD",
    ),
    Option(
        "--build-timeout",
        "Seconds an on-demand build may take (waiting included) before /load_model gets a 504.",
        (BuildSettings, "timeout_s"),
        click.FloatRange(min=1),
        env="INGRAIN_BUILD_TIMEOUT",
    ),
    Option(
        "--max-queued-builds",
        "On-demand builds that may wait for the running one; more get a 503.",
        (BuildSettings, "max_waiting"),
        click.IntRange(min=0),
        env="INGRAIN_MAX_QUEUED_BUILDS",
    ),
    Option(
        "--cors-origin",
        "Allow browsers on this origin to call the API (repeatable; '*' for any). Off by default.",
        (ServerSettings, "cors_origins"),
        multiple=True,
        dest="cors_origins",
        env="INGRAIN_CORS_ORIGINS",
    ),
    Option(
        "--cache-dir",
        "s3:// engines: where models are fetched to and served from, in a directory per "
        "bucket and prefix (default: ~/.cache/ingrain/engines).",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        env="INGRAIN_CACHE_DIR",
    ),
    Option(
        "--poll-interval",
        "s3:// engines: seconds between checks for newly published versions (0: only at "
        "start and on /load_model).",
        (RemoteSettings, "poll_interval_s"),
        click.FloatRange(min=0),
        env="INGRAIN_POLL_INTERVAL",
    ),
    Option(
        "--log-format",
        "Access-log lines as key=value text or as JSON lines.",
        (ServerSettings, "json_logs"),
        click.Choice(["text", "json"]),
        default="text",
        convert=lambda value: value == "json",
    ),
)


def serve_options(command: Callable) -> Callable:
    """`command` with every option of the table, in the table's order."""
    for option in reversed(OPTIONS):
        command = option.click_option()(command)
    return command


def field_values(values: dict[str, Any]) -> dict[type, dict[str, Any]]:
    """The options' values as settings fields, by settings class."""
    found: dict[type, dict[str, Any]] = {}
    for option in OPTIONS:
        if option.field is not None:
            cls, name = option.field
            value = values[option.name]
            found.setdefault(cls, {})[name] = option.convert(value) if option.convert else value
    return found


def settings(values: dict[str, Any], **more: Any) -> ServerSettings:
    """The frozen settings from the options' values (after `serve` has resolved the ones that
    depend on others); `more`: the fields no option fills (engines, remote)."""
    by_class = field_values(values)
    runtime = RuntimeConfig(
        batching=BatchingConfig(**by_class[BatchingConfig]),
        fetch=FetchLimits(**by_class[FetchLimits]),
        **by_class[RuntimeConfig],
    )
    return ServerSettings(
        runtime=runtime,
        builds=BuildSettings(**by_class[BuildSettings]),
        limits=Limits(**by_class[Limits]),
        readiness=ReadinessLimits(**by_class[ReadinessLimits]),
        **by_class[ServerSettings],
        **more,
    )
