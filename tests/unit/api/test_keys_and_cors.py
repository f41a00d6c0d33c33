"""API keys, admin keys and CORS, in-process (falcon's test client)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from falcon.testing import Result, TestClient

from tests.conftest import MINILM, serve_in_process


@pytest.fixture(scope="module")
def guarded(engines, tmp_path_factory) -> Iterator[TestClient]:
    flags = (
        *("--api-key", "user-key-1", "--api-key", "user-key-2", "--admin-key", "admin-key"),
        *("--cors-origin", "https://app.example", "--max-loaded-models", "10"),
    )
    with serve_in_process(engines, tmp_path_factory.mktemp("guarded"), *flags) as client:
        yield client


def call(app: TestClient, route: str, key: str | None = None, body: dict | None = None) -> Result:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is None:
        return app.simulate_get(route, headers=headers)
    return app.simulate_post(route, json=body, headers=headers)


def test_health_is_open(guarded):
    assert call(guarded, "/health").status_code == 200


@pytest.mark.parametrize("key", [None, "wrong", "user-key-1x", "user-key-"])
def test_routes_need_a_valid_key(guarded, key):
    response = call(guarded, "/embed_text", key, {"name": MINILM, "text": "a"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json["error"]
    assert call(guarded, "/metrics", key).status_code == 401


@pytest.mark.parametrize("key", ["user-key-1", "user-key-2", "admin-key"])
def test_any_configured_key_opens_inference(guarded, key):
    assert call(guarded, "/embed_text", key, {"name": MINILM, "text": "a"}).status_code == 200
    assert call(guarded, "/loaded_models", key).status_code == 200


def test_management_needs_the_admin_key(guarded):
    body = {"name": MINILM}
    refused = call(guarded, "/unload_model", "user-key-1", body)
    assert refused.status_code == 401 and "admin key" in refused.json["error"]
    assert call(guarded, "/unload_model", "admin-key", body).status_code == 200
    load = {"name": MINILM, "library": "sentence_transformers"}
    assert call(guarded, "/load_model", "admin-key", load).status_code == 200


def test_a_non_bearer_scheme_is_refused(guarded):
    response = guarded.simulate_get("/metrics", headers={"Authorization": "Basic dXNlci1rZXktMQ=="})
    assert response.status_code == 401


def test_cors_allows_only_the_configured_origin(guarded, app):
    preflight = guarded.simulate_options(
        "/embed_text",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    for origin in ("https://evil.example", "https://app.example.evil", "null"):
        refused = guarded.simulate_options(
            "/embed_text", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert "Access-Control-Allow-Origin" not in refused.headers
        simple = guarded.simulate_get("/health", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in simple.headers
    other = call(guarded, "/health")
    assert "Access-Control-Allow-Origin" not in other.headers
    plain = app.simulate_get("/health", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in plain.headers  # off unless configured


@pytest.mark.parametrize(
    "route",
    [
        "/embed_text",
        "/metrics",
        "/loaded_models",
        "/unload_model",
        "/v1/models",
        f"/v1/models/{MINILM}",
    ],
)
def test_options_needs_no_key_but_does_no_work_and_tells_nothing(guarded, route):
    """CORS preflights carry no credentials, so OPTIONS stays open; it must then answer from
    the route table alone: no body, no model names, nothing run or changed."""
    load = {"name": MINILM, "library": "sentence_transformers"}
    assert call(guarded, "/load_model", "admin-key", load).status_code == 200
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    for headers in (preflight, {}):
        answer = guarded.simulate_options(route, headers=headers, json={"name": MINILM})
        assert answer.status_code == 200 and answer.content == b""
        assert MINILM not in str(answer.headers)
    loaded = call(guarded, "/loaded_models", "admin-key").json
    assert MINILM in str(loaded)  # the OPTIONS /unload_model with a name unloaded nothing


@pytest.mark.parametrize("route", ["/no/such/route", "/v1/chat/completions", "/embed_text/x"])
def test_options_on_a_route_that_does_not_exist_is_a_404(guarded, route):
    answer = guarded.simulate_options(route, headers={"Origin": "https://app.example"})
    assert answer.status_code == 404 and MINILM not in answer.text


def test_api_keys_from_the_environment_are_split_on_spaces(engines, tmp_path, monkeypatch):
    monkeypatch.setenv("INGRAIN_API_KEYS", "key-one key-two")
    with serve_in_process(engines, tmp_path) as app:
        for key, status in (("key-one", 200), ("key-two", 200), ("key-one key-two", 401)):
            answer = app.get("/loaded_models", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == status, key
