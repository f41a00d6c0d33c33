#!/usr/bin/env bash
# Install ingrain-server with its build and dev extras into .venv, lint, and run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/hadolint Dockerfile Dockerfile.cuda
exec .venv/bin/pytest "$@"
