"""Property-based fuzzing from the OpenAPI document (schemathesis, bounded) never finds a 5xx on
a real gunicorn server, and leaves it intact."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.routes.openapi import NAME
from runtime.repository import Repository
from tests.conftest import copy_tree, start_server, stop_server


@pytest.fixture(scope="module")
def fuzz_target(pair_engines, tmp_path_factory):
    """A server of its own (fuzzing may unload models), on a copy of the repository that
    includes the cross-encoder and text classifier."""
    root = tmp_path_factory.mktemp("fuzz")
    copy_tree(pair_engines, root / "engines")
    server = start_server(
        root / "engines",
        root / "server.log",
        "--workers",
        "2",
        "--max-loaded-models",
        "10",
        "--max-body-bytes",
        "300000",
        "--download-timeout",
        "1",
    )
    server.engines = root / "engines"
    yield server
    stop_server(server)


def with_model_names(document: dict, names: list[str]) -> dict:
    """The document with every model `name` drawn from the repository's models, so generated
    requests reach the models instead of stopping at 404."""

    def walk(node):
        if isinstance(node, dict):
            if node == NAME:
                return {"type": "string", "enum": names}
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(document)


# /load_model would build whatever name it is given (minutes each) and /delete_model deletes.
SKIPPED = ("/load_model", "/delete_model")
# 503 is the readiness routes' documented answer while a model is not ready.
READINESS = ("/ready", "/models/ready")


def no_server_error(ctx, response, case):
    if case.operation.path in READINESS and response.status_code == 503:
        return None
    return schemathesis.checks.not_a_server_error(ctx, response, case)


def test_fuzzing_finds_no_server_error(fuzz_target):
    """Every other operation gets 25 generated requests (valid and invalid bodies, queries);
    none may answer 5xx. schemathesis drives hypothesis directly (its pytest plugin does not
    run under this pytest)."""
    names = [entry.name for entry in Repository(fuzz_target.engines).entries()]
    document = with_model_names(
        requests.get(fuzz_target.url + "/openapi.json", timeout=30).json(), names
    )
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=fuzz_target.url)
    operations = [result.ok() for result in schema.get_all_operations()]
    tested = []
    for operation in operations:
        if operation.path in SKIPPED:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case):
            case.call_and_validate(checks=[no_server_error], timeout=30)

        call()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) == len(operations) - len(SKIPPED)
    requests_logged = fuzz_target.log.read_text().count("method=")
    assert requests_logged >= 10 * len(tested), "the fuzzer sent fewer requests than expected"


def test_the_fuzzed_server_is_intact(fuzz_target):
    assert "Traceback" not in fuzz_target.log.read_text()
    assert requests.get(fuzz_target.url + "/health", timeout=5).ok
