"""`--backend auto` in a real server: two workers, one measures and the other reads its result;
/model_info and /metrics show the measured choice."""

from __future__ import annotations

import time

import requests

from runtime.repository import slugify
from tests.conftest import MINILM, assert_documented, copy_tree, start_server, stop_server
from tests.unit.runtime.test_backend_choice import ORT, OV


def test_server_model_info_and_metrics_show_the_measured_choice(engines, tmp_path):
    minilm = engines / slugify(MINILM)
    engines = tmp_path / "engines"
    copy_tree(minilm, engines / minilm.name)
    log = tmp_path / "server.log"
    server = start_server(
        engines,
        log,
        "--workers",
        "2",
        "--preload",
        MINILM,
        "--backend",
        "auto",
        "--precision",
        "auto",
    )
    try:
        deadline = time.monotonic() + 300
        while log.read_text().count("auto chose") < 2:
            assert time.monotonic() < deadline, "not every worker loaded the model"
            time.sleep(0.2)
        # Two workers loaded the model: one measured, the other read its result.
        text = log.read_text()
        assert text.count("(measured;") == 1 and text.count("(cached;") == 1, text
        info = requests.get(server.url + "/model_info", params={"name": MINILM}, timeout=30)
        assert_documented("/model_info", "get", info.status_code, info.json())
        engine = info.json()["towers"]["text"]["engine"]
        assert engine["chosenBy"] == "measured" and {ORT, OV} <= set(engine["probe"])
        metrics = requests.get(server.url + "/metrics", timeout=30)
        assert_documented("/metrics", "get", metrics.status_code, metrics.json())
        stats = metrics.json()["modelStats"]
        (entry,) = [tower for tower in stats if tower["name"] == MINILM]
        assert f"{entry['backend']}/{entry['precision']}" == (
            f"{engine['backend']}/{engine['precision']}"
        )
        assert set(entry["backendProbe"]) == set(engine["probe"])
    finally:
        stop_server(server)
