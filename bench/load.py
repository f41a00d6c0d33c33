"""A bounded load generator for a running ingrain server: a fixed number of requests at a
given concurrency, keep-alive connections, latency percentiles."""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from dataclasses import dataclass
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

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    items = sum(len(body[item_key]) if isinstance(body[item_key], list) else 1 for body in bodies)
    return LoadResult(len(bodies), items, seconds, latencies, statuses)


def text_bodies(name: str, texts: list[str], per_request: int, requests: int) -> list[dict]:
    """`requests` bodies of `per_request` texts each, cycling through `texts`."""
    cycle = itertools.cycle(texts)
    return [
        {"name": name, "text": [next(cycle) for _ in range(per_request)]} for _ in range(requests)
    ]
