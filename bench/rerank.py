"""Rerank throughput, pairs/s: the server's /rerank against CrossEncoder.predict in-process, in
one run on one machine, on a MiniLM-L6-sized cross-encoder (all-MiniLM-L6-v2's encoder with a
fresh one-label head: the compute of cross-encoder/ms-marco-MiniLM-L6-v2, which needs a hub)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare import demo_source, free_port, wait_for
from bench.load import run_load
from bench.sentences import sentences

MODEL = "bench/minilm-cross-encoder"
DOCUMENTS_PER_QUERY = 32


def ensure_model(engines: Path) -> Path:
    """The cross-encoder saved in the sentence-transformers format, and built into `engines`."""
    from sentence_transformers import CrossEncoder

    from builder import Progress, build_model

    source = engines.parent / "minilm-cross-encoder"
    if not source.exists():
        CrossEncoder(demo_source(), num_labels=1, max_length=256, device="cpu").save(str(source))
    build_model(str(source), engines, name=MODEL, skip_existing=True, progress=Progress(True))
    return source


def queries(texts: list[str]) -> list[tuple[str, list[str]]]:
    """One query per DOCUMENTS_PER_QUERY texts, drawn from the same fixed sentences."""
    return [
        (texts[start], texts[start + 1 : start + 1 + DOCUMENTS_PER_QUERY])
        for start in range(0, len(texts) - DOCUMENTS_PER_QUERY, DOCUMENTS_PER_QUERY + 1)
    ]


def in_process(source: Path, work: list[tuple[str, list[str]]]) -> dict:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(source), device="cpu")
    query, documents = work[0]
    model.predict([(query, document) for document in documents], batch_size=32)  # warm-up
    pairs = [(query, document) for query, documents in work for document in documents]
    started = time.perf_counter()
    model.predict(pairs, batch_size=32)
    return {"pairs_per_s": round(len(pairs) / (time.perf_counter() - started), 2)}


def served(engines: Path, work: list[tuple[str, list[str]]], concurrency: int) -> dict:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "ingrain-serve"),
        *("--engines", str(engines), "--port", str(port), "--model-port", "none"),
        *("--preload", MODEL),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    bodies = [{"name": MODEL, "query": query, "texts": texts} for query, texts in work]
    try:
        wait_for(url + "/health", process)
        run_load(url, "/rerank", bodies[:4], concurrency, item_key="texts")  # warm-up
        result = run_load(url, "/rerank", bodies, concurrency, item_key="texts").summary()
    finally:
        process.terminate()
        process.wait(30)
    return {"pairs_per_s": result["items_per_s"], **result}


def rerank(count: int, engines: Path | None, concurrency: int) -> dict:
    engines = engines or Path(tempfile.mkdtemp(prefix="ingrain-bench-")) / "engines"
    source = ensure_model(engines)
    work = queries(sentences(count))
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "pairs": len(work) * DOCUMENTS_PER_QUERY,
        "documents_per_query": DOCUMENTS_PER_QUERY,
        "cross_encoder_predict_batch32": in_process(source, work),
        f"server_c{concurrency}": served(engines, work, concurrency),
    }
    report["ratio_server_vs_predict"] = round(
        report[f"server_c{concurrency}"]["pairs_per_s"]
        / report["cross_encoder_predict_batch32"]["pairs_per_s"],
        3,
    )
    return report
