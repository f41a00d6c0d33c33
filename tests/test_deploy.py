"""The container images and Kubernetes manifests: linted and validated without a cluster or a
Docker engine (neither runs here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_are_hadolint_clean(dockerfile):
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cpu_image_installs_with_the_script_ci_runs():
    """The Dockerfile's install step is scripts/install-cpu.sh, which .ci/run runs and checks."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "bash scripts/install-cpu.sh /opt/ingrain/bin/pip" in dockerfile
    assert 'bash scripts/install-cpu.sh "$cpu_env/bin/pip"' in (ROOT / ".ci/run").read_text()
