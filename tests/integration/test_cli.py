"""The command line as a user runs it: the installed console scripts."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from api.settings import Limits, ServerSettings
from runtime.backends.openvino import bf16_supported
from runtime.batching import BatchingConfig
from runtime.config import RuntimeConfig
from tests.conftest import (
    BIN,
    CLIP,
    MINILM,
    RERANKER,
    TEXT_CLASSIFIER,
    TIMM,
    copy_tree,
    free_port,
)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True)


def test_list_shows_the_built_model(pair_engines):
    result = run("ingrain", "list", "--engines", str(pair_engines))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "LIBRARY", "TOWERS", "DIMS", "BACKENDS", "RUNS", "SIZE"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    cpu = "onnxruntime,openvino"
    assert table[MINILM][:4] == ["sentence_transformers", "text", "384", cpu]
    assert table[CLIP][:4] == ["open_clip", "text,image", "32,32", cpu]
    assert table[TIMM][:4] == ["timm", "image", "5", cpu]
    # Each tower runs on the CPU backend `auto` measures fastest (or will, at its first load);
    # bf16 only where this CPU has it (and the build verified it).
    allowed = {"onnxruntime/f32", "openvino/f32"} | (
        {"openvino/bf16"} if bf16_supported() else set()
    )
    for name, towers in ((MINILM, 1), (CLIP, 2), (TIMM, 1)):
        runs = [run.partition("(")[0] for run in table[name][4].split(",")]
        assert len(runs) == towers and set(runs) <= allowed
    assert table[RERANKER][:4] == ["cross_encoder", "pair", "1", cpu]
    assert table[TEXT_CLASSIFIER][:4] == ["cross_encoder", "pair", "3", cpu]
    assert all(row.endswith("MB") for row in rows)


def test_list_names_a_model_it_skips_and_why(engines, tmp_path):
    copy = tmp_path / "engines"
    copy_tree(engines / "sentence-transformers--all-MiniLM-L6-v2", copy / "minilm")
    (copy / "broken").mkdir()
    (copy / "broken" / "model.json").write_text("[]")
    result = run("ingrain", "list", "--engines", str(copy))
    assert result.returncode == 0, result.stderr
    assert MINILM in result.stdout
    assert result.stderr.splitlines() == [
        f"warning: skipped broken: {copy}/broken/model.json does not hold a JSON object"
    ]


def test_remove_deletes_the_model(engines, tmp_path):
    copy = tmp_path / "engines"
    copy_tree(engines, copy)
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
    assert "no such directory" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_an_unknown_preload(engines):
    result = run("ingrain-serve", "--engines", str(engines), "--preload", "no/such", "--port", "1")
    assert result.returncode != 0
    assert "ingrain-build no/such" in result.stderr


def test_serve_refuses_bad_ports_and_too_many_preloads(engines):
    serve = ("ingrain-serve", "--engines", str(engines))
    for model_port in ("8686", "abc", "0", "70000"):
        result = run(*serve, "--port", "8686", "--model-port", model_port)
        assert result.returncode == 2 and "--model-port" in result.stderr, model_port
    preloads = [part for name in (MINILM, CLIP, TIMM) for part in ("--preload", name)]
    result = run(*serve, *preloads, "--max-loaded-models", "2")
    assert result.returncode == 2 and "more than --max-loaded-models 2" in result.stderr


def test_settings_refuse_what_serve_refuses(tmp_path):
    """create_app's callers get the same checks as ingrain-serve, with the same messages."""
    small_queue = RuntimeConfig(batching=BatchingConfig(max_queue=4))
    refused = {
        "--max-items 256 is more than --max-queue 4": {"runtime": small_queue},
        "--max-documents 1024 (plus the query) is more than --max-queue 1024": {
            "limits": Limits(max_documents=1024)
        },
        "--preload: 2 models, more than --max-loaded-models 1": {
            "preload": ("a", "b"),
            "max_loaded_models": 1,
        },
        "--model-port 70000 is not a port number": {"model_port": 70000},
    }
    for message, fields in refused.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            ServerSettings(tmp_path, **fields)
    assert ServerSettings(tmp_path, preload=("a",), max_loaded_models=1, model_port=8687)


def test_a_missing_local_source_or_an_unreachable_hub_fails_fast(tmp_path):
    engines = str(tmp_path / "engines")
    for source in ("./no-such-model", "/no/such/dir", "local-dir:/no/such/clip"):
        result = run("ingrain-build", source, "--engines", engines)
        assert result.returncode == 1 and "no such directory" in result.stderr, result.stderr
    closed = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:1", "HF_HUB_OFFLINE": "0"}
    result = subprocess.run(
        [str(BIN / "ingrain-build"), "org/model", "--engines", engines],
        capture_output=True,
        text=True,
        env=closed,
        timeout=60,
    )
    assert result.returncode == 1 and "cannot reach the Hugging Face Hub" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())


def test_a_taken_port_is_one_clear_line_naming_its_flag(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = free_port()
        result = run(
            "ingrain-serve",
            "--engines",
            str(tmp_path),
            "--port",
            str(free),
            "--model-port",
            str(port),
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} (--model-port)" in result.stderr
    assert "--model-port none" in result.stderr and "Traceback" not in result.stderr
    assert f"no models in {tmp_path}" in result.stderr


def test_empty_or_spaced_keys_are_refused(engines):
    for key in ("", " ", "two words"):
        result = run("ingrain-serve", "--engines", str(engines), "--admin-key", key)
        assert result.returncode == 2 and "may not be empty" in result.stderr, key


def test_every_serve_option_defaults_to_its_settings_field():
    """The options are built from the settings' fields: with no flag given, the settings are
    the dataclasses' defaults (but for the two the command resolves: the model port, which it
    turns on, and the inference threads, which it derives from the cores)."""
    from pathlib import Path

    from api.server.options import OPTIONS, settings

    values = {o.name: () if o.multiple else o.default_value() for o in OPTIONS}
    values |= {"model_port": 8687, "intra_op_threads": 0, "log_format": "text"}
    built = settings(values, engines=Path("engines"))
    assert built == ServerSettings(engines=Path("engines"), model_port=8687)
    assert built.runtime == RuntimeConfig() and built.limits == Limits()
    assert built.runtime.batching == BatchingConfig()


def test_max_items_above_max_queue_is_refused_at_start(engines):
    result = subprocess.run(
        [
            str(BIN / "ingrain-serve"),
            "--engines",
            str(engines),
            "--max-queue",
            "4",
            "--max-items",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "--max-queue" in result.stderr
