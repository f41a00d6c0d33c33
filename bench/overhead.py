"""The server's fixed work per request: CPU microseconds its processes (gunicorn master and
workers) spend per answered request (32 connections x 1 text by default), on a tiny text model
whose execution costs next to nothing, so what is measured is the server (HTTP, parsing,
tokenising, batching hand-offs, JSON, logging, metrics) rather than the engine; the engine's
own time per request (its executions' wall time, from /metrics) is shown beside it. Linux only
(/proc)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path
from statistics import median

import requests

from bench.compare import demo_source, serving
from bench.load import run_wrk, text_bodies
from bench.sentences import sentences

TINY = "bench/tiny-text-model"


def ensure_tiny_model(engines: Path) -> None:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer and mean pooling (random weights)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from builder import Progress, build_model

    if (engines / "bench--tiny-text-model").exists():
        return
    source = Path(tempfile.mkdtemp(prefix="tiny-text-model-"))
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(source / "hf")
    BertTokenizerFast.from_pretrained(demo_source()).save_pretrained(source / "hf")
    modules = [Transformer(str(source / "hf"), max_seq_length=64), Pooling(32)]
    SentenceTransformer(modules=modules, device="cpu").save(str(source / "st"))
    build_model(str(source / "st"), engines, name=TINY, skip_existing=True, progress=Progress(True))


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and its descendants now."""
    tick = os.sysconf("SC_CLK_TCK")
    pending, total = [root], 0.0
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        pending.extend(int(child) for child in children)
    return total


def engine_ns(url: str, model: str) -> tuple[int, int]:
    """(requests inferred, nanoseconds its executions ran in the engine) so far, from /metrics:
    the batch statistics count each execution once, however many requests it served."""
    stats = requests.get(url + "/metrics", timeout=60).json()["modelStats"]
    entries = [entry for entry in stats if entry["name"] == model]
    count = sum(int(entry["inferenceStats"]["success"]["count"] or 0) for entry in entries)
    ns = sum(
        int(batch["computeInfer"]["ns"] or 0) for entry in entries for batch in entry["batchStats"]
    )
    return count, ns


def overhead(
    engines: Path | None,
    serve_args: list[str],
    seconds: float,
    rounds: int,
    concurrency: int = 32,
    per_request: int = 1,
    code: list[Path] | None = None,
    model: str | None = None,
) -> dict:
    """CPU microseconds per request of one server per `code` checkout (each run with that
    checkout first on PYTHONPATH; default: the code this runs), all started at once and driven
    in turn, round after round (alternating the order), so that the figures compare under the
    same load on the host. `model`: one already built in `engines` instead of the tiny one."""
    engines = engines or Path(tempfile.mkdtemp(prefix="ingrain-bench-"))
    if model is None:
        model = TINY
        ensure_tiny_model(engines)
    bodies = text_bodies(model, sentences(2000), per_request, max(64, 2000 // per_request))
    args = ["--workers", "1", *serve_args]
    labels = [str(path) for path in code] if code else ["current"]
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    with ExitStack() as stack:
        servers = {}
        for label, path in zip(labels, code or [None], strict=True):
            env = None if path is None else {**os.environ, "PYTHONPATH": str(path.resolve())}
            started: list[subprocess.Popen] = []
            url = stack.enter_context(serving(engines, [model], args, started, env))
            run_wrk(url, "/embed_text", bodies[:64], 8, 3.0)
            servers[label] = (url, started[0].pid)
        for round_ in range(rounds):
            for label in labels if round_ % 2 == 0 else labels[::-1]:
                url, pid = servers[label]
                before, (count_before, ns_before) = cpu_seconds(pid), engine_ns(url, model)
                figure = run_wrk(url, "/embed_text", bodies, concurrency, seconds)
                used = cpu_seconds(pid) - before
                count, ns = engine_ns(url, model)
                done = max(figure["requests"], 1)
                runs[label].append(
                    {
                        "requests_per_s": figure["requests_per_s"],
                        "cpu_us_per_request": round(used * 1e6 / done),
                        "engine_us_per_request": round((ns - ns_before) / 1e3 / done),
                        "engine_requests": count - count_before,
                    }
                )
    report: dict = {"model": model, "serve_args": args, "load": f"{concurrency} x {per_request}"}
    for label in labels:
        report[label] = {
            key: median(run[key] for run in runs[label])
            for key in ("cpu_us_per_request", "engine_us_per_request", "requests_per_s")
        }
        report[label]["runs_cpu_us_per_request"] = [
            run["cpu_us_per_request"] for run in runs[label]
        ]
    return report
