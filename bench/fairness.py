"""Fair scheduling and early refusal on one rerank tower, on a 1-worker server on 127.0.0.1.

fairness: one /rerank of the maximum documents (1000) while one client sends one-document
/rerank requests to the same model, one after another. The small requests' latency is reported
in milliseconds and in executions (latency / the tower's mean execution time over the run, from
/metrics): fair scheduling keeps it at about one to two executions, however large the big
request; draining the big request first makes it the whole big request.

queue_full: the time to the 503 for a request of 1000 x 2000-character documents sent while the
queue is full (another such request queued): refused before tokenising, it costs the JSON
parse only.

Run it against another checkout with PYTHONPATH=/that/checkout to compare, in one invocation
per checkout on the same machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from bench.compare import free_port, wait_for
from bench.rerank import MODEL, ensure_model
from bench.sentences import sentences


def start_server(engines: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "ingrain-serve"),
        *("--engines", str(engines), "--port", str(port), "--model-port", "none"),
        *("--workers", "1", "--threads", "8", "--preload", MODEL),
        *("--max-rerank-chars", "3000000", "--max-body-bytes", "16000000", *flags),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/ready", process, seconds=300)
    return process, url


def tower_figures(url: str) -> tuple[int, int]:
    """The pair tower's executions so far and their summed time (ns) from /metrics."""
    for entry in requests.get(url + "/metrics", timeout=30).json()["modelStats"]:
        if entry["name"].startswith(MODEL):
            time_ns = sum(
                int(stats[key]["ns"] or 0)
                for stats in entry["batchStats"] or []
                for key in ("computeInput", "computeInfer", "computeOutput")
            )
            return int(entry["executionCount"] or 0), time_ns
    return 0, 0


def rerank(url: str, query: str, documents: list[str]) -> tuple[int, float]:
    body = {"name": MODEL, "query": query, "texts": documents}
    started = time.perf_counter()
    status = requests.post(url + "/rerank", json=body, timeout=900).status_code
    return status, (time.perf_counter() - started) * 1000


def fairness(url: str, documents: int = 1000) -> dict:
    texts = sentences(documents + 100)
    query, large = texts[0], texts[1 : documents + 1]
    small = texts[documents + 1 :]
    alone = [rerank(url, query, [small[i % len(small)]])[1] for i in range(20)]
    executions_before, ns_before = tower_figures(url)
    result: dict = {}
    big = threading.Thread(target=lambda: result.update(big=rerank(url, query, large)))
    big.start()
    latencies, statuses = [], {}
    index = 0
    while big.is_alive():
        status, ms = rerank(url, query, [small[index % len(small)]])
        statuses[status] = statuses.get(status, 0) + 1
        latencies.append(ms)
        index += 1
    big.join()
    executions, ns = tower_figures(url)
    execution_ms = (ns - ns_before) / max(1, executions - executions_before) / 1e6
    return {
        "documents": documents,
        "large_status": result["big"][0],
        "large_ms": round(result["big"][1]),
        "executions_during": executions - executions_before,
        "mean_execution_ms": round(execution_ms, 1),
        "small_alone_p50_ms": round(float(np.percentile(alone, 50)), 1),
        "small_requests": len(latencies),
        "small_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "small_p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "small_max_ms": round(max(latencies), 1),
        "small_p50_executions": round(float(np.percentile(latencies, 50)) / execution_ms, 2),
        "small_max_executions": round(max(latencies) / execution_ms, 2),
    }


def queue_full(url: str, documents: int = 1000, chars: int = 2000) -> dict:
    """Time to the 503 for a second request of `documents` x `chars` characters while the
    first one fills the queue."""
    words = " ".join(sentences(400))
    texts = [(words[i:] + words)[:chars] for i in range(documents)]
    executions, _ = tower_figures(url)
    first: dict = {}
    filler = threading.Thread(target=lambda: first.update(r=rerank(url, "a query", texts)))
    filler.start()
    deadline = time.monotonic() + 600
    while tower_figures(url)[0] == executions and time.monotonic() < deadline:
        time.sleep(0.05)  # the first request has been tokenised and queued once it executes
    status, ms = rerank(url, "a query", texts)
    filler.join()
    return {"status": status, "ms_to_answer": round(ms, 1), "filler_status": first["r"][0]}


def run(engines: Path | None) -> dict:
    engines = engines or Path(tempfile.mkdtemp(prefix="ingrain-bench-")) / "engines"
    ensure_model(engines)
    process, url = start_server(engines)
    try:
        report = {
            "machine": {"cpus": os.cpu_count(), "code": os.environ.get("PYTHONPATH", "installed")},
            "fairness": fairness(url),
            "queue_full_503": queue_full(url),
        }
    finally:
        process.terminate()
        process.wait(60)
    return report
