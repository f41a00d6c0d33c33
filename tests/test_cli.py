"""The command line as a user runs it: the installed console scripts."""

from __future__ import annotations

import shutil
import subprocess

from runtime.backends.openvino import bf16_supported
from tests.conftest import BIN, CLIP, MINILM, TIMM


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True)


def test_list_shows_the_built_model(engines):
    result = run("ingrain", "list", "--engines", str(engines))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "LIBRARY", "TOWERS", "DIMS", "BACKENDS", "RUNS", "SIZE"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    cpu = "onnxruntime,openvino"
    assert table[MINILM][:4] == ["sentence_transformers", "text", "384", cpu]
    assert table[CLIP][:4] == ["open_clip", "text,image", "32,32", cpu]
    assert table[TIMM][:4] == ["timm", "image", "5", cpu]
    # Each tower runs on OpenVINO; bf16 only where this CPU has it (and the build verified it).
    allowed = {"openvino/f32", "openvino/bf16"} if bf16_supported() else {"openvino/f32"}
    for name, towers in ((MINILM, 1), (CLIP, 2), (TIMM, 1)):
        runs = table[name][4].split(",")
        assert len(runs) == towers and set(runs) <= allowed
    assert all(row.endswith("MB") for row in rows)


def test_remove_deletes_the_model(engines, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(engines, copy)
    result = run("ingrain", "remove", MINILM, "--engines", str(copy))
    assert result.returncode == 0, result.stderr
    assert "Removed" in result.stdout
    assert MINILM not in run("ingrain", "list", "--engines", str(copy)).stdout
    again = run("ingrain", "remove", MINILM, "--engines", str(copy))
    assert again.returncode != 0 and "is not in" in again.stderr


def test_build_refuses_overwrite_with_a_clear_message(engines, minilm_source):
    result = run("ingrain-build", minilm_source, "--name", MINILM, "--engines", str(engines))
    assert result.returncode == 1
    assert "already in" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr


def test_build_of_a_missing_source_fails_cleanly(tmp_path):
    result = run("ingrain-build", str(tmp_path / "nope"), "--engines", str(tmp_path / "e"))
    assert result.returncode == 1
    assert "cannot load" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_an_unknown_preload(engines):
    result = run("ingrain-serve", "--engines", str(engines), "--preload", "no/such", "--port", "1")
    assert result.returncode != 0
    assert "ingrain-build no/such" in result.stderr
