#!/usr/bin/env bash
# Install ingrain-server with its build and dev extras into .venv and run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet "$TORCH_SPEC" -e '.[build,dev]'
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"
