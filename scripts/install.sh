#!/usr/bin/env bash
# Create .venv (if missing) and install ingrain-server with its build and dev extras into it.
# pip runs only when pyproject.toml or TORCH_SPEC changed since the last install that succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
# These torch releases lie on this project's machines' disk (torchvision has no CPU-only wheel
# there); set TORCH_SPEC to pick other builds elsewhere.
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.ingrain-installed
wanted=$( (cat pyproject.toml; echo "$TORCH_SPEC") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    exit 0
fi
# shellcheck disable=SC2086 # TORCH_SPEC holds several requirements
.venv/bin/pip install --quiet --disable-pip-version-check $TORCH_SPEC -e '.[build,dev]'
echo "$wanted" > "$stamp"
