"""OpenVINO in real gunicorn workers: two workers compile into one cache and a restart reuses
it; /metrics and the logs say what each tower runs on, and threads never oversubscribe cores."""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from runtime.repository import slugify
from tests.conftest import CLIP, MINILM, copy_tree, start_server, stop_server
from tests.unit.runtime.test_openvino import cache_files


def test_the_compile_cache_is_written_once_and_reused(engines, tmp_path):
    """Two workers compile at once into an empty cache; a restart loads what they wrote."""
    repository = tmp_path / "engines"
    # Without the cache that earlier tests may have left in the shared repository.
    copy_tree(engines / slugify(MINILM), repository / slugify(MINILM))
    cache = repository / slugify(MINILM) / ".ov-cache"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    flags = ("--workers", "2", "--preload", MINILM, "--backend", "openvino")
    server = start_server(repository, first_log, *flags)
    try:
        assert server.post("/embed_text", {"name": MINILM, "text": ["cached"]}).ok
    finally:
        stop_server(server)
    written = cache_files(cache)
    [blob] = [name for name in written if name.endswith(".blob")]
    # One published directory, no temporary ones left behind.
    assert [p.name for p in cache.iterdir()] == [Path(blob).parts[0]]
    assert len(list((cache / Path(blob).parts[0]).iterdir())) == 1
    assert "(cache: written" in first_log.read_text()

    server = start_server(repository, second_log, *flags)
    try:
        assert server.post("/embed_text", {"name": MINILM, "text": ["cached"]}).ok
    finally:
        stop_server(server)
    log = second_log.read_text()
    assert log.count("(cache: hit") == 2 and "(cache: written" not in log
    assert cache_files(cache) == written


def test_metrics_and_threads_say_what_each_tower_runs_on(engines, tmp_path):
    log = tmp_path / "server.log"
    server = start_server(
        engines, log, "--workers", "2", "--preload", CLIP, "--backend", "openvino"
    )
    try:
        body = {"name": CLIP, "text": ["a photo"]}
        assert server.post("/embed_text", body).ok
        answer = requests.get(server.url + "/metrics", timeout=10)
        assert answer.status_code == 200, answer.text
        towers = {entry["name"]: entry for entry in answer.json()["modelStats"]}
        json_engines = {}
        for tower in ("text_encoder", "image_encoder"):
            entry = towers[f"{CLIP}/{tower}"]
            assert entry["backend"] == "openvino" and entry["precision"] in ("f32", "bf16")
            json_engines[tower] = ("openvino", entry["precision"])
        assert towers[MINILM]["backend"] is None  # built, but not loaded in any worker
        text = requests.get(server.url + "/metrics/prometheus", timeout=10).text
        samples = [
            sample
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "ingrain_tower_engine" and sample.value == 1
        ]
        prometheus_engines = {
            s.labels["tower"]: (s.labels["backend"], s.labels["precision"])
            for s in samples
            if s.labels["model"] == CLIP
        }
        assert prometheus_engines == json_engines
        # Workers x threads never oversubscribe the cores by default: 2 towers in each of 2
        # workers say so (the second worker may still be loading when the first answers).
        threads = max(1, (os.cpu_count() or 1) // 2)
        deadline = time.monotonic() + 120
        while log.read_text().count(f"{threads} threads)") < 4:
            assert time.monotonic() < deadline, "not every worker opened both towers"
            time.sleep(0.2)
    finally:
        stop_server(server)
