"""Server settings and request limits; every limit has a safe default and a flag to change it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from api.services.on_demand import BuildSettings
from runtime.config import RuntimeConfig
from runtime.repository.s3_cache import RemoteSettings


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_items: int = 256
    max_text_chars: int = 100_000
    max_name_chars: int = 512
    # /rerank and /v1/rerank: texts per request, and characters of the query and texts together.
    max_documents: int = 1000
    max_rerank_chars: int = 2_000_000
    # Seconds a client has to send a whole request (headers and body); then it is cut off.
    read_timeout_s: float = 30.0
    # Most open client connections per worker (gunicorn's worker_connections).
    max_connections: int = 1000


@dataclass(frozen=True)
class ReadinessLimits:
    # An execution running longer than this marks its model not ready: the executor is stuck.
    max_execution_s: float = 60.0
    # This many failed executions in a row mark the model not ready until a probe succeeds.
    max_failed_executions: int = 3


@dataclass(frozen=True)
class ServerSettings:
    """Everything one server runs with; checked here, so `create_app` callers get the CLI's
    checks (whose messages name the CLI flags)."""

    engines: Path
    # How models run: backend, threads, batching, image fetching and decoding.
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    preload: tuple[str, ...] = ()
    # The models that serve Text Embeddings Inference requests (which name none), one per kind.
    default_models: tuple[str, ...] = ()
    json_logs: bool = False
    # The server's loaded-model set (a file every worker follows); None serves every model.
    loaded_set: Path | None = None
    max_loaded_models: int = 5
    # Requests arriving on this port are the "model server" (its /health says so).
    model_port: int | None = None
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    # Origins allowed to call from a browser; CORS stays off when empty.
    cors_origins: tuple[str, ...] = ()
    # Management routes answer on the model port only (the inference port 404s them).
    management_on_model_port_only: bool = False
    builds: BuildSettings = field(default_factory=BuildSettings)
    limits: Limits = field(default_factory=Limits)
    readiness: ReadinessLimits = field(default_factory=ReadinessLimits)
    # Serving an s3:// repository: `engines` is then its local cache.
    remote: RemoteSettings | None = None

    def __post_init__(self) -> None:
        for key in (*self.api_keys, *self.admin_keys):
            if not key or key != key.strip() or any(c.isspace() for c in key):
                raise ValueError(
                    "an API or admin key may not be empty or hold white space (an unset "
                    'variable in --api-key "$KEY" gives an empty one)'
                )
        if self.model_port is not None and not 1 <= self.model_port <= 65535:
            raise ValueError(f"--model-port {self.model_port} is not a port number (1-65535)")
        max_queue = self.runtime.batching.max_queue
        if self.limits.max_items > max_queue:
            raise ValueError(
                f"--max-items {self.limits.max_items} is more than --max-queue {max_queue}: "
                "such requests could never be queued"
            )
        if self.limits.max_documents + 1 > max_queue:
            raise ValueError(
                f"--max-documents {self.limits.max_documents} (plus the query) is more than "
                f"--max-queue {max_queue}: such requests could never be queued"
            )
        if len(self.preload) > self.max_loaded_models:
            raise ValueError(
                f"--preload: {len(self.preload)} models, more than --max-loaded-models "
                f"{self.max_loaded_models}"
            )
        started = set(self.preload) | set(self.default_models)
        if len(started) > self.max_loaded_models:
            raise ValueError(
                f"--preload and --default-model: {len(started)} models, more than "
                f"--max-loaded-models {self.max_loaded_models}"
            )
