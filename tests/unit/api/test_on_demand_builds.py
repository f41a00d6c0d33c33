"""/load_model's on-demand builds in-process (falcon's test client): switched off, they are
refused; past --build-timeout, the build is stopped and the answer is a 504."""

from __future__ import annotations

import pytest

from tests.conftest import HUB_MODEL, serve_in_process


@pytest.mark.parametrize(
    ("flags", "status", "error"),
    [
        (("--no-build-on-load",), 404, "does not build models on demand"),
        # The build (`python -m builder`) takes longer than 1 s just to import torch.
        (("--build-timeout", "1"), 504, "longer than 1 s (--build-timeout)"),
    ],
)
def test_on_demand_builds_can_be_switched_off_and_time_out(
    engines, tmp_path, hub, monkeypatch, flags, status, error
):
    # The build runs as a child of this process: it finds the model in this Hub cache only.
    monkeypatch.setenv("HF_HOME", str(hub[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with serve_in_process(engines, tmp_path, *flags, "--max-loaded-models", "10") as app:
        response = app.post("/load_model", json={"name": HUB_MODEL})
        assert response.status_code == status
        assert error in response.json["error"]
