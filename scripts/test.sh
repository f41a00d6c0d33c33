#!/usr/bin/env bash
# Install ingrain-server with its build and dev extras into .venv, lint, and run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# checkov, which tests/unit/test_deploy.py runs on the Kubernetes manifests, in its own environment
# (its pinned dependencies would fight the project's); the demo command does not need it.
[ -x .venv-checkov/bin/checkov ] || {
    python3 -m venv .venv-checkov
    .venv-checkov/bin/pip install --quiet --disable-pip-version-check "checkov==3.3.30"
}
.venv/bin/ruff check .
.venv/bin/hadolint Dockerfile Dockerfile.cuda
# Two processes, a test file each at a time: alone, the suite keeps about one of two cores busy
# (servers starting, clients waiting on deadlines). The session's models are built once and shared
# (tests/conftest.py: built_once). `-n 0` runs it in one process.
exec .venv/bin/pytest -n 2 --dist loadfile "$@"
