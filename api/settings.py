"""Server settings and request limits; every limit has a safe default and a flag to change it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.batching import BatchingConfig
from runtime.fetch import FetchLimits
from runtime.images import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_items: int = 256
    max_text_chars: int = 100_000
    max_name_chars: int = 512
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    # Seconds a client has to send a whole request (headers and body); then it is cut off.
    read_timeout_s: float = 30.0
    # Most open client connections per worker (gunicorn's worker_connections).
    max_connections: int = 1000


@dataclass(frozen=True)
class ServerSettings:
    engines: Path
    backend: str = "auto"
    # ONNX Runtime intra-op threads per worker; 0 lets ONNX Runtime use every core.
    threads: int = 0
    preload: tuple[str, ...] = ()
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
    limits: Limits = field(default_factory=Limits)
    fetch: FetchLimits = field(default_factory=FetchLimits)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
