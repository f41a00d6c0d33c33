#!/usr/bin/env bash
# The Python side of Dockerfile: the serving install only (ONNX Runtime and OpenVINO, no torch),
# from this checkout. .ci/run runs this same script into a fresh environment and checks that
# `ingrain-serve` starts and that torch is not there.
# Usage: install-cpu.sh PIP  (the pip to use)
set -euo pipefail
cd "$(dirname "$0")/.."
"$1" install --quiet --no-cache-dir --disable-pip-version-check .
