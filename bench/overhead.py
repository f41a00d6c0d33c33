"""The server's fixed work per request: CPU microseconds its processes (gunicorn master and
workers) spend per answered request at 32 connections x 1 text, on a tiny text model whose
execution costs next to nothing, so what is measured is the server (HTTP, parsing, tokenising,
batching hand-offs, JSON, logging, metrics) rather than the engine. Linux only (/proc)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

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


def overhead(engines: Path | None, serve_args: list[str], seconds: float, rounds: int) -> dict:
    engines = engines or Path(tempfile.mkdtemp(prefix="ingrain-bench-"))
    ensure_tiny_model(engines)
    bodies = text_bodies(TINY, sentences(2000), 1, 2000)
    started: list[subprocess.Popen] = []
    args = ["--workers", "1", *serve_args]
    with serving(engines, [TINY], args, started) as url:
        run_wrk(url, "/embed_text", bodies[:64], 8, 3.0)
        runs = []
        for _ in range(rounds):
            before = cpu_seconds(started[0].pid)
            figure = run_wrk(url, "/embed_text", bodies, 32, seconds)
            used = cpu_seconds(started[0].pid) - before
            runs.append(
                {
                    "requests": figure["requests"],
                    "requests_per_s": figure["requests_per_s"],
                    "cpu_us_per_request": round(used * 1e6 / max(figure["requests"], 1)),
                }
            )
    cpu = sorted(run["cpu_us_per_request"] for run in runs)
    return {"serve_args": args, "runs": runs, "median_cpu_us_per_request": cpu[len(cpu) // 2]}
