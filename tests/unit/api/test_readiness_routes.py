"""/ready and /models/ready in-process (falcon's test client): a corrupted preloaded model is
reported while the others serve; readiness follows the loaded set through loads and unloads."""

from __future__ import annotations

import time

from falcon.testing import Result, TestClient

from tests.conftest import CLIP, MINILM, serve_in_process


def test_a_corrupted_preloaded_model_is_not_ready_while_the_others_serve(
    corrupted_clip, tmp_path, caplog
):
    preload = ("--preload", MINILM, "--preload", CLIP)
    with serve_in_process(corrupted_clip, tmp_path, *preload) as app:
        ready = app.get("/ready")
        assert ready.status_code == 503
        body = ready.json
        assert CLIP in body["error"] and "image.onnx" in body["error"]
        assert MINILM not in body["error"]
        assert [(m["name"], m["ready"]) for m in body["models"]] == [(MINILM, True), (CLIP, False)]
        assert app.get("/models/ready", params={"name": MINILM}).json["ready"] is True
        one = app.get("/models/ready", params={"name": CLIP})
        assert one.status_code == 503 and "image.onnx" in one.json["error"]
        assert app.post("/embed_text", json={"name": MINILM, "text": "a cat"}).status_code == 200
        assert app.get("/health").status_code == 200
        assert not [record for record in caplog.records if record.exc_info]  # no traceback


def wait_ready(app: TestClient, timeout_s: float = 60) -> Result:
    deadline = time.monotonic() + timeout_s
    while (answer := app.get("/ready")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    return answer


def test_ready_follows_the_loaded_set_through_load_and_unload(engines, tmp_path):
    with serve_in_process(engines, tmp_path, "--preload", MINILM) as app:
        assert app.get("/ready").json["models"] == [{"name": MINILM, "ready": True}]
        loaded = app.post("/load_model", json={"name": CLIP})
        assert loaded.status_code == 200, loaded.text
        names = [model["name"] for model in wait_ready(app).json["models"]]
        assert names == [MINILM, CLIP]
        unloaded = app.post("/unload_model", json={"name": MINILM})
        assert unloaded.status_code == 200, unloaded.text
        # An unloaded model, preloaded or not, is no longer one the server must serve.
        assert wait_ready(app).json["models"] == [{"name": CLIP, "ready": True}]
