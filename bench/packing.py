"""Packed against padded text execution on the demo model, in one invocation: in-process on the
server's own backend, tokenizer and collation (random-arrival and length-sorted groups of 32),
then through the server with and without --no-packing. Ratios and padding fractions are what
matter; every figure is measured in the same run."""

from __future__ import annotations

import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.compare import MODEL, ensure_model, load_figures, serving
from bench.load import text_bodies
from bench.sentences import sentences
from builder.verify import cosine_rows
from runtime.backends import open_backend
from runtime.batching.packing import pack, token_figures
from runtime.config import RuntimeConfig
from runtime.preprocessing.tokenizer import TextTokenizer
from runtime.repository.manifest import Manifest, PackedSpec, TowerSpec

GROUP = 32
SERVER_LOADS = ((32, 1), (8, 32))


def in_process(directory: Path, texts: list[str], runtime: RuntimeConfig, rounds: int) -> dict:
    """Each text once per round, in groups of 32 in random arrival order and sorted by length,
    through the padded and the packed graph alternately (so drift hits both alike)."""
    manifest = Manifest.read(directory)
    tower = manifest.towers["text"]
    if tower.packed is None:
        raise RuntimeError(f"{directory} has no packed graph: {manifest.build.get('packing')}")
    tokenizer = TextTokenizer(directory, manifest.tokenizer)
    names = [spec.name for spec in tower.inputs]
    packed_spec = tower.packed
    graphs = {
        "padded": (
            open_backend(directory, tower, runtime, MODEL),
            lambda ids: tokenizer.batch(ids, names),
        ),
        "packed": (
            open_backend(directory, _packed_tower(tower, packed_spec), runtime, MODEL),
            lambda ids: pack(ids, tokenizer.spec.pad_id),
        ),
    }
    ids = tokenizer.token_ids(texts)
    arrival = list(range(len(ids)))
    random.Random(0).shuffle(arrival)
    ordered = sorted(arrival, key=lambda i: len(ids[i]))
    orders = {"random": arrival, "sorted": ordered}
    seconds = {(o, g): 0.0 for o in orders for g in graphs}
    tokens = {(o, g): [0, 0] for o in orders for g in graphs}
    embeddings = {g: np.empty((len(ids), tower.dim), np.float32) for g in graphs}
    for backend, collate in graphs.values():  # warm-up
        backend.run(collate([ids[i] for i in ordered[-GROUP:]]))
    for _ in range(rounds):
        for order, sequence in orders.items():
            for graph, (backend, collate) in graphs.items():
                started = time.perf_counter()
                for start in range(0, len(sequence), GROUP):
                    group = sequence[start : start + GROUP]
                    inputs = collate([ids[i] for i in group])
                    embeddings[graph][group] = backend.run(inputs).output
                    executed, real = token_figures(inputs)
                    tokens[order, graph][0] += executed
                    tokens[order, graph][1] += real
                seconds[order, graph] += time.perf_counter() - started
    backend_name = graphs["packed"][0].describe()
    for backend, _ in graphs.values():
        backend.close()
    figures: dict = {"backend": backend_name}
    for order in orders:
        for graph in graphs:
            executed, real = tokens[order, graph]
            figures[f"{order}_{graph}"] = {
                "texts_per_s": round(rounds * len(ids) / seconds[order, graph], 2),
                "padding_fraction": round(1 - real / executed, 4),
            }
        figures[f"{order}_packed_vs_padded"] = round(
            seconds[order, "padded"] / seconds[order, "packed"], 3
        )
    cosines = cosine_rows(embeddings["packed"], embeddings["padded"])
    figures["min_cosine_packed_vs_padded"] = round(float(cosines.min()), 7)
    figures["max_abs_packed_vs_padded"] = float(
        np.abs(embeddings["packed"] - embeddings["padded"]).max()
    )
    return figures


def _packed_tower(tower: TowerSpec, packed: PackedSpec) -> TowerSpec:
    return replace(tower, onnx=packed.onnx, inputs=packed.inputs, output=packed.output)


def padding_counters(url: str) -> tuple[float, float]:
    """(executed, padding) token positions of the model's text tower, from /metrics/prometheus."""
    text = requests.get(url + "/metrics/prometheus", timeout=60).text
    totals = {"ingrain_executed_tokens": 0.0, "ingrain_padding_tokens": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] = sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("model") == MODEL
            )
    return totals["ingrain_executed_tokens"], totals["ingrain_padding_tokens"]


def server(engines: Path, texts: list[str], serve_args: list[str], seconds: float) -> dict:
    """wrk at 32 x 1 and 8 x 32 on a server with packing and on one with --no-packing, each
    with the padding fraction its /metrics counted over the run."""
    figures: dict = {}
    for name, extra in (("padded", ["--no-packing"]), ("packed", [])):
        with serving(engines, [MODEL], [*serve_args, *extra]) as url:
            for load in SERVER_LOADS:
                before = padding_counters(url)
                [(key, figure)] = load_figures(
                    url,
                    "/embed_text",
                    lambda n: text_bodies(MODEL, texts, n, len(texts) // n),
                    (load,),
                    seconds,
                    model=MODEL,
                ).items()
                executed, padding = (
                    a - b for a, b in zip(padding_counters(url), before, strict=True)
                )
                figure["padding_fraction"] = round(padding / executed, 4) if executed else None
                figures[f"{name}_{key}"] = figure
    for concurrency, per_request in SERVER_LOADS:
        key = f"c{concurrency}x{per_request}"
        figures[f"{key}_packed_vs_padded"] = round(
            figures[f"packed_{key}"]["server_items_per_s"]
            / figures[f"padded_{key}"]["server_items_per_s"],
            3,
        )
    return figures


def compare_packing(
    count: int,
    engines: Path,
    serve_args: list[str],
    with_server: bool,
    seconds: float,
    rounds: int,
) -> dict:
    texts = sentences(count)
    directory = ensure_model(engines)
    threads = os.cpu_count() or 1
    report: dict = {
        "sentences": count,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "in_process": {
            backend: in_process(
                directory, texts, RuntimeConfig(backend, "f32", threads=threads), rounds
            )
            for backend in ("onnxruntime", "openvino")
        },
    }
    if with_server:
        report["server"] = server(engines, texts, serve_args, seconds)
    return report
