"""Per-request observability: X-Request-ID, one access-log line, and HTTP metrics."""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

import falcon
import orjson
from prometheus_client import Counter, Histogram

log = logging.getLogger("ingrain.access")

HTTP_REQUESTS = Counter(
    "ingrain_http_requests", "HTTP requests by route and status.", ("method", "route", "status")
)
HTTP_LATENCY = Histogram(
    "ingrain_http_request_duration_seconds",
    "HTTP request latency by route.",
    ("method", "route"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PLAIN = re.compile(r"[A-Za-z0-9._:/@+-]+")


class Observability:
    def __init__(self, json_logs: bool = False) -> None:
        self.json_logs = json_logs
        # Each label set's metric children, looked up once (labels() takes a lock per call);
        # bounded as the labels are: route templates, methods, statuses.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        given = req.get_header("X-Request-ID") or ""
        # 32 random hex digits, as uuid4().hex gave at a quarter of its cost.
        req.context.request_id = given if REQUEST_ID.fullmatch(given) else secrets.token_hex(16)
        req.context.model = None
        req.context.items = None

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        seconds = time.perf_counter() - req.context.started
        # The route template, not the raw path, keeps label cardinality bounded.
        route = req.uri_template or "unmatched"
        status = resp.status_code
        resp.set_header("X-Request-ID", req.context.request_id)
        method = req.method
        if (counter := self._counted.get((method, route, status))) is None:
            counter = self._counted[method, route, status] = HTTP_REQUESTS.labels(
                method, route, str(status)
            )
        counter.inc()
        if (histogram := self._timed.get((method, route))) is None:
            histogram = self._timed[method, route] = HTTP_LATENCY.labels(method, route)
        histogram.observe(seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        record = {
            "method": method,
            "route": route,
            "model": req.context.model,
            "items": req.context.items,
            "status": status,
            "ms": round(seconds * 1000, 2),
            "request_id": req.context.request_id,
        }
        if self.json_logs:
            log.info(orjson.dumps(record).decode())
        else:
            log.info(" ".join(f"{key}={_text_value(value)}" for key, value in record.items()))


def _text_value(value: object) -> str:
    """A value that cannot pass for another field: quoted (JSON-style) unless it is a plain
    token."""
    if value is None:
        return "-"
    text = str(value)
    return text if PLAIN.fullmatch(text) else orjson.dumps(text).decode()
