"""/metrics against real gunicorn with 3 workers: exact counts, kill -9, Prometheus, logs."""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MINILM, start_server, stop_server

# (texts per request, requests): 40 texts split into executions of 32 and 8 (max batch 32; on
# ONNX Runtime, which the server runs here whatever this host's `auto` would choose: OpenVINO
# packs short texts past the max batch).
LOAD = [(1, 10), (3, 5), (40, 2)]
EXPECTED_ITEMS = sum(size * count for size, count in LOAD)
EXPECTED_BATCHES = {1: 10, 3: 5, 32: 2, 8: 2}


@pytest.fixture(scope="module")
def metered(engines, tmp_path_factory):
    log = tmp_path_factory.mktemp("metered") / "server.log"
    server = start_server(
        engines,
        log,
        "--workers",
        "3",
        "--threads",
        "2",
        "--log-format",
        "json",
        "--backend",
        "onnxruntime",
    )
    requests_to_send = [size for size, count in LOAD for _ in range(count)]

    def send(size: int) -> int:
        body = {"name": MINILM, "text": [f"text {i} of {size}" for i in range(size)]}
        return server.post("/embed_text", body).status_code

    # One at a time, so that no two requests share a batch and the batch sizes are known;
    # each uses a new connection, so the workers take turns as they accept them.
    assert {send(size) for size in requests_to_send} == {200}
    yield server
    stop_server(server)


def stats_of(server, name: str = MINILM) -> dict:
    body = requests.get(server.url + "/metrics", timeout=10).json()
    [entry] = [entry for entry in body["modelStats"] if entry["name"] == name]
    return entry


def test_counts_equal_what_was_sent_whichever_worker_took_it(metered):
    stats = stats_of(metered)
    assert stats["version"] == "1"
    assert stats["inferenceCount"] == str(EXPECTED_ITEMS)
    assert stats["executionCount"] == str(sum(EXPECTED_BATCHES.values()))
    assert stats["inferenceStats"]["success"]["count"] == str(sum(c for _, c in LOAD))
    assert stats["inferenceStats"]["fail"] == {"count": None, "ns": None}
    assert stats["inferenceStats"]["cache_hit"] == {"count": None, "ns": None}
    batches = {int(b["batchSize"]): int(b["computeInfer"]["count"]) for b in stats["batchStats"]}
    assert batches == EXPECTED_BATCHES
    assert abs(int(stats["lastInference"]) - time.time() * 1000) < 120_000


def test_durations_are_positive_and_consistent(metered):
    inference = stats_of(metered)["inferenceStats"]
    for stat in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert int(inference[stat]["ns"]) > 0, stat
    assert int(inference["compute_infer"]["ns"]) <= int(inference["success"]["ns"])
    computed = sum(
        int(inference[s]["ns"]) for s in ("compute_input", "compute_infer", "compute_output")
    )
    assert computed + int(inference["queue"]["ns"]) <= int(inference["success"]["ns"])
    batch_infer = sum(int(b["computeInfer"]["ns"]) for b in stats_of(metered)["batchStats"])
    assert batch_infer == int(inference["compute_infer"]["ns"])


def test_every_worker_answers_with_the_same_totals(metered):
    seen = {stats_of(metered)["inferenceCount"] for _ in range(12)}
    assert seen == {str(EXPECTED_ITEMS)}


def test_prometheus_output_parses_and_agrees_with_json(metered):
    text = requests.get(metered.url + "/metrics/prometheus", timeout=10).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    items = families["ingrain_inference_items"].samples
    assert [s.value for s in items if s.labels["model"] == MINILM] == [EXPECTED_ITEMS]
    infer_ns = [
        s.value
        for s in families["ingrain_inference_stat_ns"].samples
        if s.labels["model"] == MINILM and s.labels["stat"] == "compute_infer"
    ]
    assert infer_ns == [int(stats_of(metered)["inferenceStats"]["compute_infer"]["ns"])]
    tokenize = families["ingrain_preprocess_count"].samples
    assert sum(s.value for s in tokenize if s.labels["step"] == "tokenize") == sum(
        c for _, c in LOAD
    )
    http = families["ingrain_http_requests"].samples
    assert any(s.labels["route"] == "/embed_text" and s.labels["status"] == "200" for s in http)
    loaded = families["ingrain_model_loaded_workers"].samples
    assert all(1 <= s.value <= 3 for s in loaded)


def test_accept_header_selects_the_text_exposition(metered):
    plain = requests.get(metered.url + "/metrics", headers={"Accept": "text/plain"}, timeout=10)
    assert plain.headers["content-type"].startswith("text/plain")
    assert "ingrain_executions_total" in plain.text
    openmetrics = requests.get(
        metered.url + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=10
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    assert requests.get(metered.url + "/metrics", timeout=10).json()["modelStats"]


def test_request_id_is_echoed_or_generated_and_logged(metered):
    echoed = metered.post(
        "/embed_text", {"name": MINILM, "text": "x"}, headers={"X-Request-ID": "job-42"}
    )
    assert echoed.headers["X-Request-ID"] == "job-42"
    generated = requests.get(metered.url + "/health", timeout=5).headers["X-Request-ID"]
    assert len(generated) == 32
    deadline = time.monotonic() + 30  # the access-log line is written as the answer leaves

    def logged() -> list[str]:
        return [line for line in metered.log.read_text().splitlines() if "job-42" in line]

    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = logged()
    assert len(lines) == 1
    assert '"route":"/embed_text"' in lines[0] and f'"model":"{MINILM}"' in lines[0]
    assert '"items":1' in lines[0] and '"status":200' in lines[0]


def test_counters_survive_a_worker_killed_with_sigkill(metered):
    before = stats_of(metered)
    metered.kill_a_worker()
    for _ in range(6):
        after = stats_of(metered)
        for key in ("inferenceCount", "executionCount"):
            assert int(after[key]) >= int(before[key])
        for stat in ("success", "compute_infer"):
            assert int(after["inferenceStats"][stat]["count"]) >= int(
                before["inferenceStats"][stat]["count"]
            )
    assert metered.post("/embed_text", {"name": MINILM, "text": "after"}).status_code == 200
    assert int(stats_of(metered)["inferenceCount"]) == int(before["inferenceCount"]) + 1
