"""`GET /metrics`: Triton-shaped JSON by default, Prometheus text when the client asks for it.

Both are read from the same prometheus-client registry, which under gunicorn sums every
worker's figures (live, dead and replaced) from the multiprocess directory.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import falcon
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from api.routes import schemas
from api.routes.common import respond
from runtime.batching.stats import BATCH_STATS, MODEL_LOADED, STATS
from runtime.repository import Repository

CACHE_STATS = ("cache_hit", "cache_miss")  # no cache exists, so these stay null
BATCH_KEYS = {
    "compute_input": "computeInput",
    "compute_infer": "computeInfer",
    "compute_output": "computeOutput",
}


def registry() -> CollectorRegistry:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    combined = CollectorRegistry()
    combined.register(HeldModels(MultiProcessCollector(None, directory) if directory else REGISTRY))
    return combined


class HeldModels:
    """Every figure of `source`, but only models some live worker holds in
    ingrain_model_loaded_workers: an unloaded or deleted model's series goes (prometheus-client
    cannot remove a label in multiprocess mode, so unloading counts it down to 0)."""

    def __init__(self, source) -> None:
        self.source = source

    def collect(self):
        for metric in self.source.collect():
            if metric.name == MODEL_LOADED.describe()[0].name:
                metric.samples = [sample for sample in metric.samples if sample.value]
            yield metric


def _samples(source: CollectorRegistry) -> dict[tuple, float]:
    """Every sample as (name, model, tower, extra labels...) -> value."""
    values: dict[tuple, float] = defaultdict(float)
    for metric in source.collect():
        for sample in metric.samples:
            labels = sample.labels
            if "tower" in labels:
                extra = tuple(
                    labels[k]
                    for k in ("batch_size", "stat", "backend", "precision", "shape")
                    if k in labels
                )
                values[(sample.name, labels["model"], labels["tower"], *extra)] += sample.value
    return values


def _figure(values: dict[tuple, float], *key: str) -> str | None:
    value = values.get(key)
    return None if value is None else str(int(value))


def _duration(values: dict[tuple, float], prefix: str, *key: str) -> dict[str, str | None]:
    return {
        "count": _figure(values, f"{prefix}_count_total", *key),
        "ns": _figure(values, f"{prefix}_ns_total", *key),
    }


def tower_stats(values: dict[tuple, float], display: str, model: str, tower: str) -> dict[str, Any]:
    sizes = sorted(
        {
            int(key[3])
            for key in values
            if key[0] == "ingrain_batch_stat_count_total" and key[1:3] == (model, tower)
        }
    )
    batch_stats = [
        {
            "batchSize": str(size),
            **{
                BATCH_KEYS[stat]: _duration(
                    values, "ingrain_batch_stat", model, tower, str(size), stat
                )
                for stat in BATCH_STATS
            },
        }
        for size in sizes
    ]
    inference = {
        stat: _duration(values, "ingrain_inference_stat", model, tower, stat) for stat in STATS
    }
    inference |= {stat: {"count": None, "ns": None} for stat in CACHE_STATS}
    return {
        "name": display,
        "version": "1",
        "lastInference": _figure(values, "ingrain_last_inference_ms", model, tower),
        "inferenceCount": _figure(values, "ingrain_inference_items_total", model, tower),
        "executionCount": _figure(values, "ingrain_executions_total", model, tower),
        "inferenceStats": inference,
        "batchStats": batch_stats or None,
        **engine(values, model, tower),
        "backendProbe": probe(values, model, tower),
    }


def engine(values: dict[tuple, float], model: str, tower: str) -> dict[str, str | None]:
    """The backend and precision the tower runs on in live workers (nulls where none holds it)."""
    for key, value in values.items():
        if key[0] == "ingrain_tower_engine" and key[1:3] == (model, tower) and value > 0:
            return {"backend": key[3], "precision": key[4]}
    return {"backend": None, "precision": None}


def probe(values: dict[tuple, float], model: str, tower: str) -> dict[str, dict] | None:
    """What `auto` measured to choose the tower's engine: "backend/precision" -> probe shape ->
    median ms (null where the tower's engine was not chosen by measuring)."""
    figures: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        if key[0] == "ingrain_backend_probe_ms" and key[1:3] == (model, tower):
            figures.setdefault(f"{key[3]}/{key[4]}", {})[key[5]] = value
    return figures or None


def model_stats(repository: Repository, source: CollectorRegistry) -> list[dict[str, Any]]:
    """One entry per tower of every model in the repository (nulls where nothing ran yet)."""
    values = _samples(source)
    entries = []
    for entry in repository.entries():
        towers = [f"{key}_encoder" for key in entry.manifest.towers]
        for tower in towers:
            display = entry.name if len(towers) == 1 else f"{entry.name}/{tower}"
            entries.append(tower_stats(values, display, entry.name, tower))
    return entries


def wants_prometheus(accept: str) -> bool:
    return "text/plain" in accept or "application/openmetrics-text" in accept


class Metrics:
    def __init__(self, repository: Repository, always_prometheus: bool = False) -> None:
        self.repository = repository
        self.always_prometheus = always_prometheus

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        source = registry()
        accept = req.get_header("Accept") or ""
        if self.always_prometheus or wants_prometheus(accept):
            encode, content_type = choose_encoder(accept)
            resp.content_type = content_type
            resp.data = encode(source)
            return
        respond(resp, schemas.Metrics(model_stats(self.repository, source)))
