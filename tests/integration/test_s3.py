"""Engine repositories in object storage, against a real S3-compatible server (moto's server
mode, over HTTP on loopback, with IAM authentication on): publish, list, remove, serve from two
servers at once, republish, corrupt objects, wrong credentials and an unreachable endpoint."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
import requests

from runtime.config import RuntimeConfig
from runtime.repository import Repository
from runtime.repository.digests import file_digests
from runtime.repository.load_check import load_checker
from runtime.repository.manifest import Manifest, PromptSpec
from runtime.repository.s3 import ObjectStore, S3Location
from runtime.repository.s3_cache import VERSION_FILE, S3Cache, cache_root
from tests.conftest import (
    BIN,
    CLIP,
    QUERY_PROMPT,
    copy_model,
    free_port,
    running_server,
    start_server,
    stop_server,
)

BUCKET = "ingrain-engines"
TEXTS = ["A man is eating food.", "The new movie is awesome", "x" * 50]
# A tiny random text model: every test here moves whole versions through the store and loads
# them in load checks and servers, which MiniLM's 180 MB of graphs made the slowest in the suite.
TEXT = "test/tiny-s3-text"


@pytest.fixture(scope="module")
def text_engines(engines, minilm_source, tmp_path_factory) -> Path:
    """A repository of TEXT (with a "query" prompt, so a version's default prompt changes its
    answers) and the session's tiny CLIP."""
    from builder import BuildOptions, Progress, build_model
    from tests.models import tiny_sentence_transformer

    root = tmp_path_factory.mktemp("s3-text")
    source, _ = tiny_sentence_transformer(root / "source", minilm_source, "mean", False)
    options = BuildOptions(prompts=(f"query={QUERY_PROMPT}",))
    quiet = Progress(quiet=True)
    build_model(str(source), root / "engines", name=TEXT, options=options, progress=quiet)
    copy_model(engines, CLIP, root / "engines")
    return root / "engines"


@pytest.fixture(scope="module")
def local(text_engines, tmp_path_factory):
    """The same models served from a local directory, 2 workers as the S3 servers."""
    log = tmp_path_factory.mktemp("s3-local") / "server.log"
    with running_server(text_engines, log, "--workers", "2", "--threads", "4") as server:
        yield server


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory) -> dict[str, str]:
    """A moto S3 server with a bucket and an IAM user allowed everything; after setup it
    authenticates every request, so wrong credentials are refused as S3 would refuse them."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(endpoint + "/moto-api/", timeout=2)
            break
        except requests.RequestException:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
            time.sleep(0.2)
    setup = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    setup |= {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="ingrain")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*"}]}
    policy["Statement"][0]["Resource"] = "*"
    iam.put_user_policy(UserName="ingrain", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="ingrain")["AccessKey"]
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    requests.post(endpoint + "/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # for the in-process ObjectStore and boto3 clients below
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    process.terminate()
    process.wait(timeout=30)


def ingrain(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(BIN / "ingrain"), *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


def keys(prefix: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def publish_copy(
    engines: Path, root: Path, location: S3Location, default_prompt: str | None, **options
):
    """Publish a copy of TEXT's engine directory, its default prompt set as given (a
    version whose answers differ), through the library call ingrain-build uses."""
    directory = copy_model(engines, TEXT, root)
    manifest = Manifest.read(directory)
    prompts = replace(manifest.prompts or PromptSpec(), default=default_prompt)
    replace(manifest, prompts=prompts).write(directory)
    return ObjectStore(location).publish(directory, **options)


def publish_built(engines: Path, name: str, location: S3Location, scratch: Path) -> None:
    """Publish the build of `name` as it is (copied under `scratch` first)."""
    ObjectStore(location).publish(copy_model(engines, name, scratch))


def embed(url: str, **options) -> list:
    body = {"name": TEXT, "text": TEXTS, **options}
    answer = requests.post(url + "/embed_text", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["embeddings"]


def wait_for(check, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.2)


def test_build_publishes_and_list_and_remove_manage_the_bucket(s3_env, clip_sources):
    url = f"s3://{BUCKET}/cli"
    source = f"local-dir:{clip_sources[CLIP]}"
    built = ingrain("build", source, "--name", CLIP, "--engines", url)
    assert built.returncode == 0, built.stderr
    (pointer,) = [key for key in keys("cli/") if key.endswith("current.json")]
    assert pointer == "cli/test--tiny-clip/current.json"
    version = json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=pointer)["Body"].read())
    manifest = json.loads(
        boto3.client("s3")
        .get_object(
            Bucket=BUCKET, Key=f"cli/test--tiny-clip/versions/{version['version']}/model.json"
        )["Body"]
        .read()
    )
    assert set(manifest["files"]) >= {"text.onnx", "image.onnx"}
    assert all(len(item["sha256"]) == 64 for item in manifest["files"].values())

    again = ingrain("build", source, "--name", CLIP, "--engines", url)
    assert again.returncode != 0 and "--force" in again.stderr
    listed = ingrain("list", env={"INGRAIN_ENGINES": url})
    assert listed.returncode == 0 and CLIP in listed.stdout and "open_clip" in listed.stdout

    removed = ingrain("remove", CLIP, "--engines", url)
    assert removed.returncode == 0, removed.stderr
    assert keys("cli/") == []
    assert "No models" in ingrain("list", "--engines", url).stdout
    missing = ingrain("remove", CLIP, "--engines", url)
    assert missing.returncode != 0 and "is not in" in missing.stderr


@pytest.fixture(scope="module")
def published(s3_env, text_engines, tmp_path_factory):
    location = S3Location(BUCKET, "serve")
    publish_copy(text_engines, tmp_path_factory.mktemp("v1") / "m", location, None)
    return location


@pytest.fixture(scope="module")
def s3_servers(published, tmp_path_factory):
    """Two servers on the published repository, each with its own cache: `polling` checks for
    new versions every 0.5 s, `manual` only on /load_model. 2 workers each, as `local`."""
    root = tmp_path_factory.mktemp("s3-servers")
    common = ["--preload", TEXT, "--workers", "2", "--threads", "4"]
    url = str(published)
    polling = start_server(
        url, root / "polling.log", *common, "--cache-dir", str(root / "a"), "--poll-interval", "0.5"
    )
    manual = start_server(url, root / "manual.log", *common, "--cache-dir", str(root / "b"))
    yield polling, manual, root
    stop_server(polling)
    stop_server(manual)


def test_two_servers_on_the_bucket_answer_as_a_local_directory(s3_servers, local):
    polling, manual, _ = s3_servers
    expected = embed(local.url)
    assert embed(polling.url) == expected
    assert embed(manual.url) == expected


def test_republish_moves_servers_by_poll_and_by_load_model(
    s3_servers, local, published, text_engines, tmp_path
):
    polling, manual, _ = s3_servers
    before, after = embed(local.url), embed(local.url, prompt_name="query")
    assert before != after
    publish_copy(text_engines, tmp_path / "v2", published, "query")

    # Each worker loads the new version beside the old one, which serves until the swap: the
    # server stays ready throughout.
    readiness = []

    def moved() -> bool:
        readiness.append(requests.get(polling.url + "/ready", timeout=30).status_code)
        return all(embed(polling.url) == after for _ in range(6))

    wait_for(moved, "both of the polling server's workers serve the new version")
    assert set(readiness) == {200}
    assert embed(manual.url) == before  # no poll: still the version it fetched
    answer = requests.post(manual.model_url + "/load_model", json={"name": TEXT}, timeout=60)
    assert answer.status_code == 200, answer.text
    # Each worker reloads the swapped-in version at its next refresh (0.5 s).
    wait_for(
        lambda: all(embed(manual.url) == after for _ in range(6)),
        "both of the manual server's workers serve the new version",
    )


def test_load_model_fetches_a_model_published_after_start(
    s3_servers, local, published, text_engines, tmp_path
):
    _, manual, _ = s3_servers
    publish_built(text_engines, CLIP, published, tmp_path)
    answer = requests.post(manual.model_url + "/load_model", json={"name": CLIP}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = {"name": CLIP, "text": TEXTS}
    assert (
        manual.post("/embed_text", body).json()["embeddings"]
        == (local.post("/embed_text", body).json()["embeddings"])
    )


def test_a_model_removed_from_the_bucket_leaves_the_polling_server(
    s3_servers, published, text_engines, tmp_path
):
    """`ingrain remove` on the bucket: the polling server drops its cached copy and answers
    404 for the model, and /ready stays 200 (a deliberate removal must not take the server
    out of its load balancer while it serves the other models)."""
    polling, _, _ = s3_servers
    publish_built(text_engines, CLIP, published, tmp_path)
    loaded = requests.post(polling.model_url + "/load_model", json={"name": CLIP}, timeout=60)
    assert loaded.status_code == 200, loaded.text
    body = {"name": CLIP, "text": TEXTS}
    assert polling.post("/embed_text", body).status_code == 200

    removed = ingrain("remove", CLIP, "--engines", str(published))
    assert removed.returncode == 0, removed.stderr
    wait_for(
        lambda: all(polling.post("/embed_text", body).status_code == 404 for _ in range(6)),
        "both workers of the polling server stop serving the removed model",
    )
    listed = requests.get(polling.model_url + "/repository_models", timeout=30).json()
    assert CLIP not in json.dumps(listed)
    ready = requests.get(polling.url + "/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    assert [model["name"] for model in ready.json()["models"]] == [TEXT]
    assert polling.post("/embed_text", {"name": TEXT, "text": TEXTS}).status_code == 200


def test_stores_sharing_a_cache_directory_leave_each_other_s_models_alone(
    s3_env, text_engines, tmp_path
):
    """Each cached model records the bucket and prefix it came from: a sync of one store
    removes only its own unpublished models, never another store's or a local one."""
    cache = tmp_path / "cache"
    first, second = S3Location(BUCKET, "shared-a"), S3Location(BUCKET, "shared-b")
    publish_built(text_engines, CLIP, first, tmp_path / "clip")
    publish_built(text_engines, TEXT, second, tmp_path / "text")
    caches = [S3Cache(ObjectStore(location), cache) for location in (first, second)]
    for each in caches:
        assert each.sync_all() == []
    shutil.copytree(copy_model(text_engines, CLIP, tmp_path / "local"), cache / "built-here")
    assert caches[0].sync_all() == [] and caches[1].sync_all() == []
    assert Repository(cache).contains(CLIP) and Repository(cache).contains(TEXT)

    ObjectStore(first).remove(CLIP)
    assert caches[1].sync_all() == []
    assert caches[0].sync_all() == [CLIP]
    assert Repository(cache).contains(TEXT)  # the other store's
    assert (cache / "built-here" / "model.json").is_file()  # put there by hand


def test_concurrent_publishes_of_one_name_leave_one_whole_version(s3_env, text_engines, tmp_path):
    location = S3Location(BUCKET, "race")

    def publish(prompt: str | None):
        return publish_copy(text_engines, tmp_path / f"source-{prompt}", location, prompt), prompt

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        prompts = {
            published.version: prompt for published, prompt in pool.map(publish, [None, "query"])
        }
    store = ObjectStore(location)
    current = store.find(TEXT)
    assert current is not None and current.version in prompts
    # download() checks the manifest against the pointer and every file against the manifest.
    fetched = store.download(current, tmp_path / "fetched")
    assert fetched.prompts.default == prompts[current.version]
    assert sorted(path.name for path in (tmp_path / "fetched").iterdir()) == sorted(
        ["model.json", *fetched.files]
    )


def test_a_publish_sweeps_old_superseded_versions_but_keeps_the_one_it_replaces(
    s3_env, text_engines, tmp_path
):
    location = S3Location(BUCKET, "sweep")

    def versions() -> set[str]:
        return {key.split("/")[3] for key in keys("sweep/") if "/versions/" in key}

    first = publish_copy(text_engines, tmp_path / "1", location, None)
    second = publish_copy(text_engines, tmp_path / "2", location, None)
    assert versions() == {first.version, second.version}  # younger than the default hour
    third = publish_copy(text_engines, tmp_path / "3", location, None, sweep_after_s=0)
    assert versions() == {second.version, third.version}
    assert ObjectStore(location).find(TEXT) == third


def test_a_corrupt_object_is_named_and_the_previous_version_keeps_serving(
    s3_servers, text_engines, tmp_path
):
    polling, manual, _ = s3_servers
    serving = [embed(polling.url), embed(manual.url)]
    # A version whose tokenizer.json rotted in the store: published elsewhere, damaged, then
    # copied in with its pointer last (as a publish writes it), so no server sees it whole.
    draft = S3Location(BUCKET, "draft")
    new = publish_copy(text_engines, tmp_path / "v3", draft, None)
    s3 = boto3.client("s3")
    s3.put_object(
        Bucket=BUCKET, Key=f"draft/{new.slug}/versions/{new.version}/tokenizer.json", Body=b"{}"
    )
    for key in [*keys(f"draft/{new.slug}/versions/"), f"draft/{new.slug}/current.json"]:
        target = "serve/" + key.removeprefix("draft/")
        s3.copy_object(Bucket=BUCKET, Key=target, CopySource={"Bucket": BUCKET, "Key": key})
    corrupt = f"serve/{new.slug}/versions/{new.version}/tokenizer.json"

    answer = requests.post(manual.model_url + "/load_model", json={"name": TEXT}, timeout=60)
    assert answer.status_code == 502
    assert f"s3://{BUCKET}/{corrupt}" in answer.json()["error"]
    assert "SHA-256" in answer.json()["error"]
    # It serves the cached version, and says what it skipped (once the worker that took the
    # load has finished it: until then /ready says "loading in this worker").
    wait_for(
        lambda: requests.get(manual.url + "/ready", timeout=30).status_code == 200,
        "the manual server is ready again",
    )
    ready = requests.get(manual.url + "/ready", timeout=30)
    assert [item["name"] for item in ready.json()["unreadable"]] == [TEXT]
    wait_for(
        lambda: f"s3://{BUCKET}/{corrupt}" in polling.log.read_text(),
        "the polling server logs the corrupt object",
    )
    assert [embed(polling.url), embed(manual.url)] == serving

    boto3.client("s3").delete_object(Bucket=BUCKET, Key=corrupt)
    answer = requests.post(manual.model_url + "/load_model", json={"name": TEXT}, timeout=60)
    assert answer.status_code == 502
    assert f"s3://{BUCKET}/{corrupt}" in answer.json()["error"]
    assert "missing" in answer.json()["error"]
    assert embed(manual.url) == serving[1]


HOSTILE_MANIFESTS = {
    "lacks the model": (lambda files: files.pop("text.onnx"), "lacks text.onnx"),
    "a NUL in a name": (
        lambda files: files.update({"a\x00b": files["tokenizer.json"]}),
        "bad file",
    ),
    "file and folder": (
        lambda files: files.update({"tokenizer.json/x": files["tokenizer.json"]}),
        "both a file and a folder",
    ),
}


@pytest.mark.parametrize("damage", [*HOSTILE_MANIFESTS, "files a list", "manifest a list"])
def test_a_version_whose_manifest_cannot_serve_is_refused_before_the_swap(
    s3_servers, text_engines, tmp_path, damage
):
    """A pointer and manifest that check out (digests match) but whose file list lacks a file
    the model needs, or names one no file system can hold: refused before anything is
    written, and the cached version keeps serving."""
    _, manual, root = s3_servers
    serving = embed(manual.url)
    draft = S3Location(BUCKET, f"draft-{len(damage)}")
    new = publish_copy(text_engines, tmp_path / "v", draft, None)
    s3 = boto3.client("s3")
    version = f"{new.slug}/versions/{new.version}"
    raw = s3.get_object(Bucket=BUCKET, Key=f"{draft.prefix}/{version}/model.json")["Body"]
    manifest = json.loads(raw.read())
    if damage == "files a list":
        manifest["files"], expected = list(manifest["files"]), "not a mapping"
    elif damage == "manifest a list":
        manifest, expected = [manifest], "a JSON list, not an object"
    else:
        change, expected = HOSTILE_MANIFESTS[damage]
        change(manifest["files"])
    body = json.dumps(manifest).encode()
    for key in keys(f"{draft.prefix}/{version}/"):
        target = "serve/" + key.removeprefix(f"{draft.prefix}/")
        s3.copy_object(Bucket=BUCKET, Key=target, CopySource={"Bucket": BUCKET, "Key": key})
    s3.put_object(Bucket=BUCKET, Key=f"serve/{version}/model.json", Body=body)
    pointer = replace(new, manifest_sha256=hashlib.sha256(body).hexdigest())
    s3.put_object(Bucket=BUCKET, Key=f"serve/{new.slug}/current.json", Body=pointer.as_json())

    answer = requests.post(manual.model_url + "/load_model", json={"name": TEXT}, timeout=60)
    assert answer.status_code == 502 and expected in answer.json()["error"], answer.text
    assert embed(manual.url) == serving
    assert not [path for path in root.rglob("*") if "\x00" in path.name or path.name == "x"]


def test_wrong_credentials_and_an_unreachable_endpoint_fail_clearly(
    s3_servers, published, tmp_path
):
    _, manual, root = s3_servers
    url = str(published)
    wrong = {"AWS_SECRET_ACCESS_KEY": "wrong"}
    listed = ingrain("list", "--engines", url, env=wrong)
    assert listed.returncode != 0 and "refused the credentials" in listed.stderr
    closed = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    listed = ingrain("list", "--engines", url, env=closed)
    assert listed.returncode != 0 and "cannot reach the object store" in listed.stderr
    built = ingrain("build", "unused-source", "--engines", url, env=closed)
    assert built.returncode != 0 and "cannot reach the object store" in built.stderr

    # A server with nothing cached cannot start; one with a cache serves it, with a warning.
    serve = [str(BIN / "ingrain-serve"), "--engines", url, "--port", str(free_port())]
    empty = subprocess.run(
        [*serve, "--cache-dir", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **wrong},
    )
    assert empty.returncode != 0 and "refused the credentials" in empty.stderr
    cached = tmp_path / "cached"
    shutil.copytree(root / "b", cached, ignore=shutil.ignore_patterns(".*lock*"))
    offline = start_server(
        url, tmp_path / "offline.log", "--cache-dir", str(cached), "--preload", TEXT, env=closed
    )
    try:
        assert embed(offline.url) == embed(manual.url)
        assert "cannot reach the object store" in offline.log.read_text()
    finally:
        stop_server(offline)
    assert ObjectStore(published).find(TEXT) is not None  # nothing lost in the bucket


def put(key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)


def break_objects(prefix: str) -> dict[str, str]:
    """Unreadable objects of five models under `prefix`: {model or slug: what its reason
    says}. Four pointers that are not one (not JSON, a list, over 64 KiB, a version holding a
    slash) and a pointer to a manifest that is JSON but not an object."""
    put(f"{prefix}/not-json/current.json", b"not json")
    put(f"{prefix}/a-list/current.json", b"[]")
    put(f"{prefix}/too-big/current.json", b" " * (65 * 1024))
    slashed = {"name": "slashed", "version": "a/b", "manifest_sha256": "0" * 64}
    put(f"{prefix}/slashed/current.json", json.dumps(slashed).encode())
    listed = b"[1, 2]"
    put(f"{prefix}/listed/versions/v1/model.json", listed)
    pointer = {"name": "listed", "version": "v1"}
    pointer["manifest_sha256"] = hashlib.sha256(listed).hexdigest()
    put(f"{prefix}/listed/current.json", json.dumps(pointer).encode())
    return {
        "not-json": "not a model pointer",
        "a-list": "not a model pointer",
        "too-big": "larger than 65536 bytes",
        "slashed": "bad version 'a/b'",
        "listed": "a JSON list, not an object",
    }


def test_unreadable_objects_of_some_models_leave_the_others_syncing(
    s3_env, text_engines, tmp_path, caplog
):
    """A cache sync skips each broken model, reports it with the reason (logged once, not at
    every poll), and keeps fetching the others, including their new versions."""
    location = S3Location(BUCKET, "isolated")
    publish_copy(text_engines, tmp_path / "v1", location, None)
    broken = break_objects(location.prefix)
    cache = S3Cache(ObjectStore(location), tmp_path / "cache")
    assert cache.sync_all() == []
    repository = Repository(tmp_path / "cache")
    assert repository.contains(TEXT)
    unreadable = repository.unreadable()
    assert set(unreadable) == set(broken)
    for name, reason in broken.items():
        assert reason in unreadable[name]

    second = publish_copy(text_engines, tmp_path / "v2", location, "query")
    caplog.clear()
    with caplog.at_level("ERROR"):
        assert cache.sync_all() == []
        assert cache.sync_all() == []
    record = json.loads((tmp_path / "cache" / second.slug / VERSION_FILE).read_text())
    assert record["version"] == second.version  # the good model moved on
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert skipped == [], "the same reasons were logged again at the next polls"


def test_ingrain_list_and_a_fresh_server_skip_unreadable_models_and_say_why(
    s3_env, text_engines, tmp_path
):
    location = S3Location(BUCKET, "fresh")
    publish_copy(text_engines, tmp_path / "v1", location, None)
    broken = break_objects(location.prefix)
    listed = ingrain("list", "--engines", str(location))
    assert listed.returncode == 0, listed.stderr
    assert TEXT in listed.stdout
    for name, reason in broken.items():
        assert f"skipped {name}: " in listed.stderr and reason in listed.stderr

    # An empty cache: the server starts with what it can read, and /ready says what it skipped.
    server = start_server(
        location.url(),
        tmp_path / "fresh.log",
        *("--cache-dir", str(tmp_path / "cache"), "--workers", "1"),
        *("--preload", TEXT, "--preload", "not-json"),
    )
    try:
        assert embed(server.url) == embed(server.url)
        ready = requests.get(server.url + "/ready", timeout=30)
        assert ready.status_code == 200, ready.text
        reasons = {item["name"]: item["reason"] for item in ready.json()["unreadable"]}
        assert set(reasons) == set(broken)
        assert "not a model pointer" in reasons["not-json"]
    finally:
        stop_server(server)


def test_remove_and_a_republish_replace_an_unreadable_pointer(s3_env, clip_sources, tmp_path):
    location = S3Location(BUCKET, "replace")
    break_objects(location.prefix)
    removed = ingrain("remove", "not-json", "--engines", str(location))
    assert removed.returncode == 0, removed.stderr
    assert keys(f"{location.prefix}/not-json/") == []

    put(f"{location.prefix}/test--tiny-clip/current.json", b"not json")
    source = f"local-dir:{clip_sources[CLIP]}"
    built = ingrain("build", source, "--name", CLIP, "--engines", str(location))
    assert built.returncode == 0, built.stderr
    assert ObjectStore(location).find(CLIP) is not None


def test_a_version_that_does_not_load_never_replaces_the_cached_copy(
    s3_env, text_engines, local, tmp_path
):
    """A version whose files match their digests but whose graph does not load: refused
    before the swap, so the cache (what a restarted or replaced worker loads) keeps the
    last version that loaded, and the reason is reported."""
    location = S3Location(BUCKET, "unloadable")
    good = publish_copy(text_engines, tmp_path / "good", location, None)
    store = ObjectStore(location)
    root = cache_root(location, tmp_path / "cache")
    cache = S3Cache(store, root, load_checker(RuntimeConfig(backend="onnxruntime")))
    cache.sync_all()
    directory = copy_model(text_engines, TEXT, tmp_path / "bad")
    for graph in directory.glob("*.onnx"):  # the padded graph, and the packed one it serves
        graph.write_bytes(b"\x08\x01not a graph")
    manifest = Manifest.read(directory)
    replace(manifest, files=file_digests(directory)).write(directory)
    store.publish(directory)

    assert cache.sync_all() == []
    entry = Repository(root).find(TEXT)
    assert json.loads((entry.directory / VERSION_FILE).read_text())["version"] == good.version
    assert "does not load" in Repository(root).unreadable()[TEXT]
    # A restart on that cache: it refuses the new version again and serves the one it has.
    restarted = start_server(
        location.url(),
        tmp_path / "restart.log",
        *("--cache-dir", str(tmp_path / "cache"), "--workers", "1", "--preload", TEXT),
    )
    try:
        assert embed(restarted.url) == embed(local.url)
    finally:
        stop_server(restarted)


def test_servers_of_different_stores_sharing_a_cache_directory_serve_their_own(
    s3_env, text_engines, local, tmp_path
):
    """Two prefixes publish a model under the same name (different versions): two servers
    sharing --cache-dir each serve their own store's."""
    first, second = S3Location(BUCKET, "share-1"), S3Location(BUCKET, "share-2")
    publish_copy(text_engines, tmp_path / "one", first, None)
    publish_copy(text_engines, tmp_path / "two", second, "query")
    shared = tmp_path / "cache"
    assert cache_root(first, shared) != cache_root(second, shared)
    common = ["--cache-dir", str(shared), "--workers", "1", "--preload", TEXT]
    one = start_server(first.url(), tmp_path / "one.log", *common, "--poll-interval", "0.2")
    two = start_server(second.url(), tmp_path / "two.log", *common, "--poll-interval", "0.2")
    try:
        expected = embed(local.url), embed(local.url, prompt_name="query")
        for _ in range(5):  # across polls of both
            assert (embed(one.url), embed(two.url)) == expected
    finally:
        stop_server(one)
        stop_server(two)


def test_a_manifest_whose_file_entries_are_not_sizes_and_digests_is_skipped_by_list_and_sync(
    s3_env, text_engines, tmp_path
):
    """A manifest (matching its pointer) whose file list has a size that is not a number of
    bytes: `ingrain list` and a sync skip that model with the reason and show the others."""
    location = S3Location(BUCKET, "file-entries")
    publish_copy(text_engines, tmp_path / "v1", location, None)
    manifest = json.loads(
        (Repository(text_engines).find(TEXT).directory / "model.json").read_text()
    )
    manifest["name"] = "sizeless"
    manifest["files"]["tokenizer.json"]["bytes"] = "lots"
    data = json.dumps(manifest).encode()
    put(f"{location.prefix}/sizeless/versions/v1/model.json", data)
    pointer = {
        "name": "sizeless",
        "version": "v1",
        "manifest_sha256": hashlib.sha256(data).hexdigest(),
    }
    put(f"{location.prefix}/sizeless/current.json", json.dumps(pointer).encode())

    listed = ingrain("list", "--engines", str(location))
    assert listed.returncode == 0, listed.stderr
    assert TEXT in listed.stdout
    assert "skipped sizeless: " in listed.stderr and "no size in bytes" in listed.stderr
    cache = S3Cache(ObjectStore(location), tmp_path / "cache")
    assert cache.sync_all() == []
    assert Repository(tmp_path / "cache").contains(TEXT)
    assert "no size in bytes" in Repository(tmp_path / "cache").unreadable()["sizeless"]


def test_a_pointer_moving_between_broken_versions_fetches_each_once(s3_env, text_engines, tmp_path):
    """Two published versions, each with a corrupt file, and a pointer moved back and forth
    between them: each is fetched once, then skipped at every poll, whichever the pointer
    names (versions are never rewritten), instead of fetched again at each move."""
    location = S3Location(BUCKET, "flapping")
    versions = [publish_copy(text_engines, tmp_path / f"v{n}", location, None) for n in (1, 2)]
    for version in versions:
        put(f"flapping/{version.slug}/versions/{version.version}/tokenizer.json", b"{}")
    cache = S3Cache(ObjectStore(location), tmp_path / "cache")

    def point_at(version) -> str:
        put(f"flapping/{version.slug}/current.json", version.as_json().encode())
        assert cache.sync_all() == []
        return Repository(tmp_path / "cache").unreadable()[TEXT]

    first = [point_at(version) for version in versions]
    assert all("SHA-256" in reason for reason in first)
    for version in versions:  # a fetch now would find the file missing, not corrupt
        s3 = boto3.client("s3")
        s3.delete_object(
            Bucket=BUCKET, Key=f"flapping/{version.slug}/versions/{version.version}/tokenizer.json"
        )
    assert [point_at(version) for version in versions * 2] == first * 2


def test_the_load_check_loads_a_version_as_the_server_would_serve_it(
    s3_env, text_engines, tmp_path
):
    """A version whose packed graph is damaged but whose padded one is whole: a server that
    serves padded graphs (--no-packing) takes it, one that packs refuses it."""
    location = S3Location(BUCKET, "packing-check")
    directory = copy_model(text_engines, TEXT, tmp_path / "damaged")
    packed = Manifest.read(directory).towers["text"].packed.onnx
    (directory / packed).write_bytes(b"\x08\x01not a graph")
    manifest = Manifest.read(directory)
    replace(manifest, files=file_digests(directory)).write(directory)
    version = ObjectStore(location).publish(directory)

    for packing in (False, True):
        root = tmp_path / f"cache-{packing}"
        runtime = RuntimeConfig(backend="onnxruntime", packing=packing)
        S3Cache(ObjectStore(location), root, load_checker(runtime)).sync_all()
        fetched = Repository(root).contains(TEXT)
        assert fetched == (not packing), Repository(root).unreadable()
        if fetched:
            record = json.loads((root / version.slug / VERSION_FILE).read_text())
            assert record["version"] == version.version
        else:
            assert "does not load" in Repository(root).unreadable()[TEXT]
