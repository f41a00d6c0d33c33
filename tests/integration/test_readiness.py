"""Readiness over real gunicorn: /ready is 503 while a worker warms its loaded set, then 200;
a request past the queue deadline gets 503 and is counted in the server's metrics."""

from __future__ import annotations

import time

import requests

from tests.conftest import CLIP, MINILM, start_server, stop_server


def get(server, route: str, **kwargs) -> requests.Response:
    return requests.get(server.url + route, timeout=30, **kwargs)


def test_ready_is_503_until_the_loaded_set_is_warm_in_the_worker_then_200(corrupted_clip, tmp_path):
    # --max-loaded-models 1: the loaded set is MiniLM alone; the broken CLIP stays unloaded.
    server = start_server(
        corrupted_clip, tmp_path / "server.log", "--max-loaded-models", "1", "--api-key", "k"
    )
    try:
        first = get(server, "/ready")  # probes carry no key
        assert first.status_code == 503
        assert first.json()["models"] == [
            {"name": MINILM, "ready": False, "reason": "loading in this worker"}
        ]
        assert wait_ready(server).json() == {
            "ready": True,
            "models": [{"name": MINILM, "ready": True}],
        }
        key = {"Authorization": "Bearer k"}
        assert get(server, "/models/ready", params={"name": MINILM}).status_code == 401
        assert get(server, "/models/ready", params={"name": MINILM}, headers=key).ok
        unloaded = get(server, "/models/ready", params={"name": CLIP}, headers=key)
        assert (
            unloaded.status_code == 503 and "load it with /load_model" in unloaded.json()["error"]
        )
        unknown = get(server, "/models/ready", params={"name": "no/such"}, headers=key)
        assert unknown.status_code == 404
        assert get(server, "/models/ready", headers=key).status_code == 400
        # The warm-up ran outside the metrics: nothing was inferred for a client yet.
        stats = get(server, "/metrics", headers=key).json()["modelStats"]
        assert next(s for s in stats if s["name"] == MINILM)["inferenceCount"] is None
    finally:
        stop_server(server)


def test_a_request_past_the_queue_deadline_gets_503_and_is_counted(engines, tmp_path):
    # 1 µs: no request leaves the queue that fast, so every one is dropped (warm-ups are not).
    server = start_server(
        engines, tmp_path / "server.log", "--preload", MINILM, "--max-queue-wait-ms", "0.001"
    )
    try:
        dropped = server.post("/embed_text", {"name": MINILM, "text": "late"})
        assert dropped.status_code == 503 and dropped.headers["Retry-After"] == "1"
        assert "dropped before execution" in dropped.json()["error"]
        text = get(server, "/metrics/prometheus").text
        assert (
            f'ingrain_queue_deadline_drops_total{{model="{MINILM}",tower="text_encoder"}} 1.0'
            in text
        )
    finally:
        stop_server(server)


def wait_ready(server, timeout_s: float = 60) -> requests.Response:
    deadline = time.monotonic() + timeout_s
    while (answer := get(server, "/ready")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    return answer
