#!/usr/bin/env bash
# The Python side of Dockerfile.cuda: ingrain-server with its build extras and cuda-python.
# TensorRT itself comes from NVIDIA's image (its PyPI package downloads from NVIDIA's index),
# so this installs the `gpu` extra's other half only. .ci/run runs this same script in .venv.
# Usage: install-gpu.sh PIP  (the pip to use)
set -euo pipefail
cd "$(dirname "$0")/.."
# Model Optimizer (TensorRT 11 FP16 builds) is the gpu extra's; it belongs in this image only.
"$1" install --quiet --disable-pip-version-check ".[build]" "cuda-python>=13,<14" \
    "nvidia-modelopt[onnx]>=0.40"
