"""Packed against padded text execution on the demo model, in one invocation: in-process on the
server's own backend, tokenizer and collation (random-arrival and length-sorted groups of 32),
then through the server with and without --no-packing. Ratios and padding fractions are what
matter; every figure is measured in the same run."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.compare import MODEL, demo_source, ensure_model, load_figures, serving
from bench.load import text_bodies
from bench.sentences import sentences
from builder.verify import cosine_rows
from runtime.backends import Backend, open_backend
from runtime.batching.packing import pack, to_bucket_width, token_figures
from runtime.config import RuntimeConfig
from runtime.pairs import PairTokenizer
from runtime.preprocessing.tokenizer import TextTokenizer
from runtime.repository import Repository, slugify
from runtime.repository.manifest import Manifest, PackedSpec, TowerSpec

GROUP = 32
BACKENDS = ("onnxruntime", "openvino")
# A MiniLM-sized cross-encoder for --pairs (ensure_cross_encoder).
PAIR_MODEL = "bench/minilm-cross-encoder"
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
    graphs = {
        "padded": (
            open_backend(directory, tower, runtime, MODEL),
            lambda ids: tokenizer.batch(ids, names),
        ),
        "packed": (
            open_backend(directory, _packed_tower(tower, tower.packed), runtime, MODEL),
            lambda ids: pack(ids, tokenizer.spec.pad_id),
        ),
    }
    ids = tokenizer.token_ids(texts)
    figures, outputs = _measure(graphs, ids, len, tower.dim, rounds)
    cosines = cosine_rows(outputs["packed"], outputs["padded"])
    figures["min_cosine_packed_vs_padded"] = round(float(cosines.min()), 7)
    figures["max_abs_packed_vs_padded"] = float(np.abs(outputs["packed"] - outputs["padded"]).max())
    return figures


def in_process_pairs(
    directory: Path, texts: list[str], runtime: RuntimeConfig, rounds: int
) -> dict:
    """`in_process` for a cross-encoder: (query, document) pairs of the sentences, each
    sentence the document of one pair, its query the sentence before it."""
    manifest = Manifest.read(directory)
    tower = manifest.towers["pair"]
    if tower.packed is None:
        raise RuntimeError(f"{directory} has no packed graph: {manifest.build.get('packing')}")
    tokenizer = PairTokenizer(directory, manifest.tokenizer)
    names = [spec.name for spec in tower.inputs]
    packed_names = [spec.name for spec in tower.packed.inputs]
    graphs = {
        "padded": (
            open_backend(directory, tower, runtime, PAIR_MODEL),
            partial(tokenizer.batch, names=names),
        ),
        "packed": (
            open_backend(directory, _packed_tower(tower, tower.packed), runtime, PAIR_MODEL),
            partial(tokenizer.batch_packed, names=packed_names),
        ),
    }
    encodings = tokenizer.encode(texts[-1:] + texts[:-1], texts)
    items = [(encoding.ids, encoding.type_ids) for encoding in encodings]
    figures, outputs = _measure(graphs, items, lambda item: len(item[0]), tower.dim, rounds)
    figures["max_abs_packed_vs_padded"] = float(np.abs(outputs["packed"] - outputs["padded"]).max())
    return figures


def _measure(
    graphs: dict[str, tuple[Backend, Callable[[list], dict]]],
    items: list,
    length_of: Callable[[Any], int],
    dim: int,
    rounds: int,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Figures of `items` through each graph (backend and collation) in groups of 32, in random
    arrival order and sorted by length, `rounds` times; and each graph's outputs, in order.
    Closes the backends."""
    arrival = list(range(len(items)))
    random.Random(0).shuffle(arrival)
    ordered = sorted(arrival, key=lambda i: length_of(items[i]))
    orders = {"random": arrival, "sorted": ordered}
    seconds = {(o, g): 0.0 for o in orders for g in graphs}
    tokens = {(o, g): [0, 0] for o in orders for g in graphs}
    outputs = {g: np.empty((len(items), dim), np.float32) for g in graphs}
    for backend, collate in graphs.values():  # warm-up
        backend.run(collate([items[i] for i in ordered[-GROUP:]]))
    for _ in range(rounds):
        for order, sequence in orders.items():
            for graph, (backend, collate) in graphs.items():
                started = time.perf_counter()
                for start in range(0, len(sequence), GROUP):
                    group = sequence[start : start + GROUP]
                    inputs = collate([items[i] for i in group])
                    if backend.bucket_widths:  # as the server's tower does
                        inputs = to_bucket_width(inputs)
                    outputs[graph][group] = backend.run(inputs).output
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
                "items_per_s": round(rounds * len(items) / seconds[order, graph], 2),
                "padding_fraction": round(1 - real / executed, 4),
            }
        figures[f"{order}_packed_vs_padded"] = round(
            seconds[order, "padded"] / seconds[order, "packed"], 3
        )
    return figures, outputs


def ensure_cross_encoder(engines: Path) -> Path:
    """A reranker the size of the demo model: MiniLM's encoder under a fresh one-label head,
    built like any cross-encoder. Its scores mean nothing; its cost is a MiniLM
    cross-encoder's, and packed and padded must still agree on them."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from builder import Progress, build_model

    if not (engines / slugify(PAIR_MODEL) / "model.json").exists():
        torch.manual_seed(0)
        source = engines / ".pair-source"
        model = AutoModelForSequenceClassification.from_pretrained(demo_source(), num_labels=1)
        model.save_pretrained(source)
        AutoTokenizer.from_pretrained(demo_source()).save_pretrained(source)
        build_model(str(source), engines, name=PAIR_MODEL, progress=Progress(True))
    return Repository(engines).find(PAIR_MODEL).directory


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
    pairs: bool = False,
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
            for backend in BACKENDS
        },
    }
    if pairs:
        reranker = ensure_cross_encoder(engines)
        report["in_process_pairs"] = {
            backend: in_process_pairs(
                reranker, texts, RuntimeConfig(backend, "f32", threads=threads), rounds
            )
            for backend in BACKENDS
        }
    if with_server:
        report["server"] = server(engines, texts, serve_args, seconds)
    return report
