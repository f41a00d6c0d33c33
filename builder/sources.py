"""Check a build's source before any library loads it, so a typo or an offline Hub fails in
seconds with a message that says what to do (the libraries would retry for a minute and then
report a repo-id format error for a missing local directory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from builder.errors import BuildError

HUB_SCHEMES = ("hf-hub:", "hf_hub:")
PROBE_TIMEOUT_S = 5.0


def check_source(source: str, library: str) -> None:
    """Raise BuildError when `source` is a local path that does not exist, or a Hub id while
    the Hub cannot be reached (unless HF_HUB_OFFLINE asks for the local cache)."""
    path = source.removeprefix("local-dir:")
    if Path(path).expanduser().exists():
        return
    if source.startswith("local-dir:") or path.startswith(("/", ".", "~")) or "\\" in path:
        raise BuildError(f"no such directory: {path}")
    hub_id = source
    for scheme in HUB_SCHEMES:
        hub_id = hub_id.removeprefix(scheme)
    if hub_id == source and library != "sentence_transformers":
        return  # an open_clip or timm architecture name, not a Hub repository
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    _probe_hub(hub_id)


def classifies_sequences(source: str) -> bool:
    """Whether the model's config.json names a `*ForSequenceClassification` architecture: a
    cross-encoder or a text classifier."""
    architectures = _json_file(source, "config.json").get("architectures")
    return isinstance(architectures, list) and any(
        str(name).endswith("ForSequenceClassification") for name in architectures
    )


def is_sparse_encoder(source: str) -> bool:
    """Whether sentence-transformers saved the model as a SparseEncoder (SPLADE)."""
    config = _json_file(source, "config_sentence_transformers.json")
    return config.get("model_type") == "SparseEncoder"


def _json_file(source: str, name: str) -> dict:
    """A JSON file of the model, local or from the Hub or its cache; {} when there is none,
    none reachable, or it is not a JSON object."""
    path = Path(source).expanduser() / name
    try:
        if not path.parent.is_dir():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, name, etag_timeout=PROBE_TIMEOUT_S))
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _probe_hub(hub_id: str) -> None:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        huggingface_hub.HfApi().model_info(hub_id, timeout=PROBE_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise BuildError(
            f"{hub_id!r} is neither a local directory nor a model on the Hugging Face Hub "
            "(a private one needs HF_TOKEN)"
        ) from None
    except HfHubHTTPError:
        return  # the Hub answered: let the library load it and report what it finds
    except Exception as error:  # the HTTP client's own connection and timeout errors
        raise BuildError(
            f"cannot reach the Hugging Face Hub for {hub_id!r} ({type(error).__name__}); pass a "
            "local model directory, or set HF_HUB_OFFLINE=1 to build from the local Hub cache"
        ) from None
