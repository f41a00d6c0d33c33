"""Soak and stress: a 2-worker server on 127.0.0.1 under mixed text / image / classify load at
saturation for a bounded time, reporting every answer by status, latency and worker memory.

Goal: no 5xx and no lost request (every request answered) below the queue limit,
and worker RSS growing less than 5% between the end of warm-up and the end of the run, on each
CPU backend. Texts come in lengths from one sentence to past the model's 256 tokens, so the
executions take many shapes (variable shapes are what make inference arenas grow).

Then a burst of maximum-length texts (256 texts of 60,000 characters per request, within every
default limit), reporting worker RSS before, at its peak during, and after the burst: the
memory a worker takes for the longest inputs should come back once they are done.
"""

from __future__ import annotations

import base64
import itertools
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from api.server.malloc import TRIM_INTERVAL_S
from bench.compare import MODEL, ensure_model, free_port, wait_for
from bench.images import ensure_tiny_clip
from bench.sentences import sentences


def _run_then_measure(threads: list[threading.Thread], pid: int) -> dict[int, float]:
    """Run a stage's load threads to the end, give the worker's periodic malloc trim its
    interval to run (the wait is what is measured after), then each worker's RSS in MB."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(TRIM_INTERVAL_S + 1)
    return worker_rss_mb(pid)


def worker_rss_mb(master_pid: int) -> dict[int, float]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    rss = {}
    for pid in map(int, children):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss[pid] = int(line.split()[1]) / 1024
    return rss


def long_text_burst(
    url: str,
    master_pid: int,
    clients: int = 2,
    per_client: int = 1,
    texts: int = 256,
    chars: int = 60_000,
) -> dict:
    """Worker RSS (MB) before, at peak during and after (past the workers' next trim)
    `clients` x `per_client` requests of `texts` texts of `chars` characters each, with their
    statuses and the slowest answer."""
    words = " ".join(sentences()[:400])
    body = {"name": MODEL, "text": [(words[i:] + words)[:chars] for i in range(texts)]}
    rss = {"before": worker_rss_mb(master_pid)}
    peak = dict(rss["before"])
    statuses: dict[int, int] = {}
    slowest = 0.0
    lock = threading.Lock()
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            for pid, mb in worker_rss_mb(master_pid).items():
                peak[pid] = max(peak.get(pid, 0.0), mb)
            time.sleep(0.1)

    def client() -> None:
        nonlocal slowest
        for _ in range(per_client):
            started = time.perf_counter()
            try:
                status = requests.post(url + "/embed_text", json=body, timeout=600).status_code
            except requests.RequestException:
                status = 0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                slowest = max(slowest, time.perf_counter() - started)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    running.clear()
    sampler.join()
    # What the workers keep: after their next trim (api.server.malloc).
    time.sleep(TRIM_INTERVAL_S + 1)
    rss["peak_during"] = peak
    rss["after"] = worker_rss_mb(master_pid)
    return {
        "requests": clients * per_client,
        "texts_per_request": texts,
        "chars_per_text": chars,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "slowest_s": round(slowest, 2),
        "worker_rss_mb": {
            stage: {str(k): round(v, 1) for k, v in values.items()} for stage, values in rss.items()
        },
    }


def tiny_models(engines: Path) -> tuple[str, str]:
    """A tiny random CLIP (for images) and a tiny timm classifier, built as tests build them."""
    from builder import BuildOptions, Progress, build_model
    from tests.models import LABELS, TIMM_ARCH, tiny_timm_classifier

    scratch = Path(tempfile.mkdtemp(prefix="ingrain-soak-"))
    labels = scratch / "labels.txt"
    labels.write_text("\n".join(LABELS))
    classifier = "soak/tiny-timm"
    options = BuildOptions(
        labels=labels, checkpoint=tiny_timm_classifier(scratch, 5), num_classes=5
    )
    quiet = Progress(quiet=True)
    build_model(TIMM_ARCH, engines, classifier, "timm", options, skip_existing=True, progress=quiet)
    return ensure_tiny_clip(engines), classifier


RSS_GROWTH_LIMIT_PERCENT = 5.0


def varied_texts(texts: list[str], rng: random.Random, count: int = 8) -> list[str]:
    """`count` texts of 1 to 24 sentences each: from a few tokens to past the model's maximum."""
    return [" ".join(rng.sample(texts, rng.randint(1, 24))) for _ in range(count)]


def soak(minutes: float, concurrency: int, engines: Path | None, backend: str = "auto") -> dict:
    from builder.verify import verification_images

    engines = engines or Path(tempfile.mkdtemp(prefix="ingrain-soak-engines-"))
    ensure_model(engines)
    clip, classifier = tiny_models(engines)
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "ingrain-serve"),
        *("--engines", str(engines), "--port", str(port), "--model-port", "none"),
        *("--workers", "2", "--backend", backend),
        *("--preload", MODEL, "--preload", clip, "--preload", classifier),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    texts = sentences()
    shapes = random.Random(0)
    images = [base64.b64encode(data).decode() for data in verification_images()[:3]]
    bodies = itertools.cycle(
        [("/embed_text", {"name": MODEL, "text": varied_texts(texts, shapes)}) for _ in range(50)]
        + [
            ("/embed_image", {"name": clip, "image": images}),
            ("/embed", {"name": clip, "text": texts[:4], "image": images[:1]}),
            ("/classify_image", {"name": classifier, "image": images}),
        ]
    )
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    sent = 0
    try:
        wait_for(url + "/health", process)
        # A sixth of the run (at most 5 minutes): enough requests for the shapes to recur even
        # on a busy machine.
        warm_until = time.monotonic() + min(300.0, minutes * 60 / 6)
        end = time.monotonic() + minutes * 60
        rss: dict[str, dict[int, float]] = {"start": worker_rss_mb(process.pid)}

        def client(seed: int, until: float) -> None:
            nonlocal sent
            session = requests.Session()
            rng = random.Random(seed)
            while time.monotonic() < until:
                with lock:
                    route, body = next(bodies)
                    sent += 1
                started = time.perf_counter()
                try:
                    status = session.post(url + route, json=body, timeout=60).status_code
                except requests.RequestException:
                    status = 0
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    latencies.append((time.perf_counter() - started) * 1000)
                if rng.random() < 0.01:
                    session.close()
                    session = requests.Session()

        # RSS is read with no request in flight, after the workers' next trim
        # (api.server.malloc), at the end of warm-up and of the run alike: the growth compares
        # the memory they keep, not one moment's activations, or freed heap not yet given back,
        # with another's.
        for stage, until in (("after_warmup", warm_until), ("end", end)):
            threads = [threading.Thread(target=client, args=(i, until)) for i in range(concurrency)]
            rss[stage] = _run_then_measure(threads, process.pid)
        long_texts = long_text_burst(url, process.pid)
    finally:
        process.terminate()
        process.wait(60)
    answered = sum(statuses.values())
    growth = {
        pid: round(100 * (rss["end"].get(pid, 0) - mb) / mb, 1)
        for pid, mb in rss["after_warmup"].items()
    }
    lost, server_errors = sent - answered, sum(v for k, v in statuses.items() if k >= 500 or k == 0)
    return {
        "minutes": minutes,
        "backend": backend,
        "concurrency": concurrency,
        "sent": sent,
        "answered": answered,
        "lost": lost,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": server_errors,
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "worker_rss_mb": {
            stage: {str(k): round(v, 1) for k, v in values.items()} for stage, values in rss.items()
        },
        "rss_growth_after_warmup_percent": {str(k): v for k, v in growth.items()},
        "rss_growth_limit_percent": RSS_GROWTH_LIMIT_PERCENT,
        "passed": lost == 0
        and server_errors == 0
        and max(growth.values(), default=0.0) < RSS_GROWTH_LIMIT_PERCENT,
        "long_texts": long_texts,
    }


# --- the mixed soak against object storage -----------------------------------------------------

BUCKET = "ingrain-soak"
SMALL_ROUTES = ("/embed_text", "/rerank:small")


def moto_store(work: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with one bucket, and the environment that reaches it."""
    import boto3

    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(work / "moto.log", "wb"),  # noqa: SIM115 (the process owns it)
        stderr=subprocess.STDOUT,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "soak",
        "AWS_SECRET_ACCESS_KEY": "soak",
    }
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(env["AWS_ENDPOINT_URL"] + "/moto-api/", timeout=2)
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    client_env = {key.lower(): value for key, value in env.items() if key != "AWS_DEFAULT_REGION"}
    client_env["endpoint_url"] = client_env.pop("aws_endpoint_url")
    boto3.client("s3", region_name="us-east-1", **client_env).create_bucket(Bucket=BUCKET)
    return process, env


def mixed_soak(minutes: float, republish_minutes: float, engines: Path | None) -> dict:
    """The server on an s3:// repository (moto), 2 workers, under small /embed_text requests,
    OpenAI /v1/embeddings, /rerank of the maximum documents and one-document /rerank requests
    to the same model, while MiniLM is republished every `republish_minutes`. Reports 5xx,
    the small requests' latency against their deadline (--max-queue-wait-ms), and worker RSS
    growth from the end of warm-up."""
    import os

    from bench.rerank import MODEL as CROSS_ENCODER
    from bench.rerank import ensure_model as ensure_cross_encoder
    from runtime.repository import Repository
    from runtime.repository.s3 import ObjectStore, S3Location

    work = Path(tempfile.mkdtemp(prefix="ingrain-mixed-soak-"))
    engines = engines or work / "engines"
    ensure_model(engines)
    ensure_cross_encoder(engines)
    moto, env = moto_store(work)
    os.environ.update(env)  # for the publishes from here
    location = S3Location(BUCKET, "models")
    store = ObjectStore(location)
    for name in (MODEL, CROSS_ENCODER):
        store.publish(Repository(engines).find(name).directory)
    deadline_ms = 30_000.0  # ingrain-serve's default --max-queue-wait-ms
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "ingrain-serve"),
        *("--engines", location.url(), "--cache-dir", str(work / "cache")),
        *("--port", str(port), "--model-port", "none", "--workers", "2"),
        *("--poll-interval", "2", "--preload", MODEL, "--preload", CROSS_ENCODER),
    ]
    process = subprocess.Popen(
        command,
        stdout=open(work / "server.log", "wb"),  # noqa: SIM115 (the process owns it)
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    url = f"http://127.0.0.1:{port}"
    texts = sentences()
    query, documents = texts[0], texts[1:1001]
    bodies = {
        "/embed_text": lambda i: {"name": MODEL, "text": [texts[i % len(texts)]]},
        "/v1/embeddings": lambda i: {"model": MODEL, "input": texts[i % 500 : i % 500 + 4]},
        "/rerank": lambda i: {"name": CROSS_ENCODER, "query": query, "texts": documents},
        "/rerank:small": lambda i: {
            "name": CROSS_ENCODER,
            "query": query,
            "texts": [texts[i % len(texts)]],
        },
    }
    lock = threading.Lock()
    statuses: dict[str, dict[int, int]] = {route: {} for route in bodies}
    small_ms: list[float] = []
    republished = 0

    def client(route: str, until: float) -> None:
        session = requests.Session()
        index = 0
        while time.monotonic() < until:
            index += 1
            started = time.perf_counter()
            try:
                answer = session.post(
                    url + route.split(":")[0], json=bodies[route](index), timeout=600
                )
                status = answer.status_code
            except requests.RequestException:
                status = 0
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                statuses[route][status] = statuses[route].get(status, 0) + 1
                if route in SMALL_ROUTES:
                    small_ms.append(elapsed)

    def republisher(until: float) -> None:
        nonlocal republished
        while time.monotonic() + republish_minutes * 60 < until:
            time.sleep(republish_minutes * 60)
            store.publish(Repository(engines).find(MODEL).directory)
            republished += 1

    try:
        wait_for(url + "/ready", process, seconds=600)
        warm_until = time.monotonic() + min(300.0, minutes * 60 / 6)
        end = time.monotonic() + minutes * 60
        rss: dict[str, dict[int, float]] = {"start": worker_rss_mb(process.pid)}
        routes = ["/embed_text", "/embed_text", "/v1/embeddings", "/rerank", "/rerank:small"]
        for stage, until in (("after_warmup", warm_until), ("end", end)):
            threads = [threading.Thread(target=client, args=(r, until)) for r in routes]
            if stage == "end":
                threads.append(threading.Thread(target=republisher, args=(until,)))
            rss[stage] = _run_then_measure(threads, process.pid)
    finally:
        process.terminate()
        process.wait(60)
        moto.terminate()
        moto.wait(30)
    growth = {
        pid: round(100 * (rss["end"].get(pid, 0) - mb) / mb, 1)
        for pid, mb in rss["after_warmup"].items()
    }
    server_errors = sum(
        count
        for per in statuses.values()
        for status, count in per.items()
        if status >= 500 or not status
    )
    late = sum(ms > deadline_ms for ms in small_ms)
    return {
        "minutes": minutes,
        "republish_every_minutes": republish_minutes,
        "republished": republished,
        "statuses": {
            route: {str(k): v for k, v in sorted(per.items())} for route, per in statuses.items()
        },
        "server_errors": server_errors,
        "small_requests": len(small_ms),
        "small_p50_ms": round(float(np.percentile(small_ms, 50)), 1),
        "small_p99_ms": round(float(np.percentile(small_ms, 99)), 1),
        "small_max_ms": round(max(small_ms), 1),
        "deadline_ms": deadline_ms,
        "small_past_deadline": late,
        "worker_rss_mb": {
            stage: {str(k): round(v, 1) for k, v in values.items()} for stage, values in rss.items()
        },
        "rss_growth_after_warmup_percent": {str(k): v for k, v in growth.items()},
        "passed": server_errors == 0
        and late == 0
        and max(growth.values(), default=0.0) < RSS_GROWTH_LIMIT_PERCENT,
    }
