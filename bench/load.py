"""Load generators for a running ingrain server: a bounded number of requests from client
threads (`bench load`), or wrk for a fixed time (`bench compare`: it costs the shared CPU
little). Keep-alive connections, latency percentiles."""

from __future__ import annotations

import http.client
import itertools
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson


@dataclass
class LoadResult:
    requests: int
    items: int
    seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 200)

    def summary(self) -> dict:
        latencies = np.array(self.latencies_ms or [0.0])
        return {
            "requests": self.requests,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests / self.seconds, 2),
            "items_per_s": round(self.items / self.seconds, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p90_ms": round(float(np.percentile(latencies, 90)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        }


def run_load(
    url: str,
    route: str,
    bodies: list[dict],
    concurrency: int,
    item_key: str = "text",
    timeout_s: float = 120.0,
) -> LoadResult:
    """Send every body once, from `concurrency` threads each holding one connection."""
    parts = urlsplit(url)
    queue = iter(range(len(bodies)))
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    def worker() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        while True:
            with lock:
                index = next(queue, None)
            if index is None:
                break
            payload = orjson.dumps(bodies[index])
            started = time.perf_counter()
            try:
                connection.request("POST", route, payload, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(
                    parts.hostname, parts.port, timeout=timeout_s
                )
                status = 0
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
        connection.close()

    seconds = run_threads(worker, concurrency)
    items = sum(len(body[item_key]) if isinstance(body[item_key], list) else 1 for body in bodies)
    return LoadResult(len(bodies), items, seconds, latencies, statuses)


def run_threads(target: Callable[[], None], count: int) -> float:
    """Run `target` in `count` threads at once; the seconds until the last one ends."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def text_bodies(name: str, texts: list[str], per_request: int, requests: int) -> list[dict]:
    """`requests` bodies of `per_request` texts each, cycling through `texts`."""
    cycle = itertools.cycle(texts)
    return [
        {"name": name, "text": [next(cycle) for _ in range(per_request)]} for _ in range(requests)
    ]


WRK_SCRIPT = Path(__file__).with_name("wrk_bodies.lua")
WRK_MISSING = (
    "bench compare drives the server with wrk (one event-loop thread, so the load generator "
    "takes little of the CPU the server runs on), and wrk is not on PATH: install it "
    "(Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk) and run again, or pass "
    "--in-process-only"
)


class WrkMissing(RuntimeError):
    pass


def wrk_executable() -> str:
    """wrk's path, or WrkMissing saying how to install it."""
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing(WRK_MISSING)
    return found


def run_wrk(
    url: str,
    route: str,
    bodies: list[dict],
    concurrency: int,
    seconds: float,
    item_key: str = "text",
    timeout_s: float = 60.0,
) -> dict:
    """POST `bodies` in turn over `concurrency` keep-alive connections from one wrk thread for
    `seconds`; the same summary as LoadResult's (latency percentiles from wrk's histogram).
    Every body must hold the same number of items."""
    sizes = {len(body[item_key]) if isinstance(body[item_key], list) else 1 for body in bodies}
    if len(sizes) != 1:
        raise ValueError("every body must hold the same number of items")
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as file:
        file.write(b"\n".join(orjson.dumps(body) for body in bodies) + b"\n")
        file.flush()
        command = [
            wrk_executable(),
            *("-t1", f"-c{concurrency}", f"-d{seconds:g}s", f"--timeout={timeout_s:g}s"),
            *("-s", str(WRK_SCRIPT), url, "--", file.name, route),
        ]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + timeout_s + 30
        ).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    figures = orjson.loads(line.removeprefix("WRK_JSON "))
    requests, elapsed = figures["requests"], figures["duration_us"] / 1e6
    answered = requests - figures["status"]  # wrk counts non-2xx answers among its requests
    return {
        "requests": requests,
        "errors": sum(figures[key] for key in ("connect", "read", "write", "status", "timeout")),
        "non_2xx": figures["status"],
        "seconds": round(elapsed, 3),
        "requests_per_s": round(requests / elapsed, 2),
        "items_per_s": round(answered * sizes.pop() / elapsed, 2),
        **{f"p{p}_ms": round(figures[f"p{p}_us"] / 1000, 2) for p in (50, 90, 99)},
    }
