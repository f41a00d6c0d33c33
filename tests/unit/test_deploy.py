"""The container images and Kubernetes manifests: linted and validated without a cluster or a
Docker engine (neither runs here)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from tests.conftest import BIN, MINILM

ROOT = Path(__file__).resolve().parents[2]


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


KUBERNETES = ROOT / "deploy" / "kubernetes"
# Every directory a user applies: the overlays, and the examples built on them.
OVERLAYS = sorted(
    str(path.parent.relative_to(KUBERNETES))
    for path in KUBERNETES.rglob("kustomization.yaml")
    if "kind: Kustomization" in path.read_text() and path.parent.name != "base"
)
# Kubernetes versions the manifests must be valid for: the oldest release still in
# maintenance when they were written, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.utils.latest_version())
# checkov findings accepted on purpose (docs/kubernetes.md, "Checks", says why).
ACCEPTED_CHECKS = ("CKV_K8S_43",)
CHECKOV = Path(os.environ.get("INGRAIN_CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))


def render(overlay: str) -> list[dict]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / overlay)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def pod_containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def test_the_overlays_are_cpu_gpu_and_the_queue_autoscaling_example():
    assert OVERLAYS == ["cpu", "examples/cpu-queue-autoscaling", "gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(overlay):
    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap",
        "Secret", "Job", "ServiceAccount", "NetworkPolicy", "Namespace",
    } <= kinds  # fmt: skip
    for version in KUBERNETES_VERSIONS:
        for document in objects:
            kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_on_a_read_only_root_with_writable_tmp(overlay):
    objects = render(overlay)
    for kind, name in (("Deployment", "ingrain-server"), ("Job", "ingrain-publish")):
        spec = find(objects, kind, name)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in pod_containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}
            assert {"requests", "limits"} <= set(container["resources"]), container["name"]


# Started: workers answer once their preloads are warm; ready: /ready; alive: /health.
PROBES = {"startupProbe": "/health", "readinessProbe": "/ready", "livenessProbe": "/health"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_routes_the_server_has_and_termination_covers_the_drain(overlay, tmp_path):
    from api.app import create_app
    from api.server.server import GRACEFUL_TIMEOUT_S
    from api.settings import ServerSettings
    from tests.unit.api.test_openapi import app_routes

    routes = {path for path, method in app_routes(create_app(ServerSettings(engines=tmp_path)))}
    pod = find(render(overlay), "Deployment", "ingrain-server")["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "ingrain-server")
    assert {kind: server[kind]["httpGet"]["path"] for kind in PROBES} == PROBES
    assert set(PROBES.values()) <= routes
    pause = int(server["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pause + GRACEFUL_TIMEOUT_S
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }


def test_the_gpu_overlay_requests_a_gpu_and_runs_the_cuda_image():
    objects = render("gpu")
    for kind, name, container in (
        ("Deployment", "ingrain-server", "ingrain-server"),
        ("Job", "ingrain-publish", "build"),
    ):
        spec = find(objects, kind, name)["spec"]["template"]["spec"]
        chosen = next(c for c in pod_containers(spec) if c["name"] == container)
        assert chosen["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert chosen["image"].endswith("-cuda")
    cpu = find(render("cpu"), "Deployment", "ingrain-server")["spec"]["template"]["spec"]
    server = next(c for c in cpu["containers"] if c["name"] == "ingrain-server")
    assert server["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in server["resources"]["limits"]


def test_checkov_finds_nothing_but_the_accepted_checks(tmp_path):
    assert CHECKOV.exists(), (
        f"checkov is not at {CHECKOV}: scripts/test.sh installs it into .venv-checkov "
        "(or set INGRAIN_CHECKOV to a checkov executable)"
    )
    for overlay in OVERLAYS:
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(KUBERNETES / overlay)], capture_output=True, text=True
        )
        (tmp_path / f"{overlay.replace('/', '-')}.yaml").write_text(rendered.stdout)
    result = subprocess.run(
        [
            str(CHECKOV),
            *("--directory", str(tmp_path), "--framework", "kubernetes", "--output", "json"),
            *("--skip-check", ",".join(ACCEPTED_CHECKS), "--skip-download", "--quiet"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(result.stdout)
    failed = [
        f"{check['check_id']} {check['resource']}: {check['check_name']}"
        for check in report["results"]["failed_checks"]
    ]
    assert failed == [], failed
    assert report["summary"]["passed"] > 100  # it really checked the manifests


def test_every_ingrain_setting_in_the_configmap_is_an_ingrain_serve_variable():
    from cli import serve_command

    variables = {param.envvar for param in serve_command.params if param.envvar}
    settings = KUBERNETES / "base" / "settings.env"
    keys = {
        line.split("=", 1)[0]
        for line in settings.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert {"INGRAIN_PRELOAD", "INGRAIN_MAX_QUEUE_WAIT_MS"} <= keys
    assert {key for key in keys if key.startswith("INGRAIN_")} <= variables


def test_ingrain_serve_takes_preloads_separated_by_spaces_from_the_environment(engines):
    """As the ConfigMap sets them: every name is checked (the second one is unknown)."""
    result = subprocess.run(
        [str(BIN / "ingrain-serve"), "--engines", str(engines), "--port", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "INGRAIN_PRELOAD": f"{MINILM} no/such"},
    )
    assert result.returncode != 0
    assert "--preload no/such" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_and_the_publish_job_use_the_bucket_as_their_engine_repository(overlay):
    """The server fetches and checks the bucket's models itself (into an emptyDir cache), and
    the Job publishes into the bucket with ingrain-build: no copy step in between."""
    objects = render(overlay)
    pod = find(objects, "Deployment", "ingrain-server")["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "ingrain-server")
    assert {"--engines=$(ENGINES_URI)", "--cache-dir=/engines"} <= set(server["args"])
    cache = next(m for m in server["volumeMounts"] if m["mountPath"] == "/engines")
    assert not cache.get("readOnly")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == cache["name"])
    job = find(objects, "Job", "ingrain-publish")["spec"]["template"]["spec"]
    (build,) = pod_containers(job)
    assert "--engines=$(ENGINES_URI)" in build["args"]
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    assert settings["ENGINES_URI"].startswith("s3://")
