"""The public `ingrain` client (0.2.3), unchanged, against real ingrain-serve with 2 workers on
both ports: every call it has, model management across workers, and its snake_case bodies."""

from __future__ import annotations

import base64
import subprocess

import ingrain
import numpy as np
import pytest
import requests
from ingrain.ingrain_errors import IngrainWebException

from tests.conftest import BIN, CLIP, MINILM, TIMM, copy_model, cosines, running_server
from tests.models import LABELS

E5 = "intfloat/e5-small-v2"
MOBILECLIP = "hf-hub:apple/MobileCLIP-S1-OpenCLIP"


def build(*args: str) -> None:
    subprocess.run([str(BIN / "ingrain-build"), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def repository(tmp_path_factory, engines, clip_sources):
    """Models under public names: MobileCLIP built with `ingrain-build --name` as a user would,
    the demo model's build copied under E5's name, and the tiny timm and CLIP models."""
    root = tmp_path_factory.mktemp("client-engines")
    labels = root.parent / "labels.txt"
    labels.write_text("\n".join(LABELS))
    clip = f"local-dir:{clip_sources[CLIP]}"
    build(clip, "--name", MOBILECLIP, "--labels", str(labels), "--engines", str(root))
    copy_model(engines, MINILM, root, as_name=E5)
    for name in (TIMM, CLIP):
        copy_model(engines, name, root)
    return root


@pytest.fixture(scope="module")
def served(repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("client-server") / "server.log"
    with running_server(repository, log, "--workers", "2", "--max-loaded-models", "3") as server:
        yield server


@pytest.fixture
def client(served):
    return ingrain.Client(inference_server_url=served.url, model_server_url=served.model_url)


def image_b64() -> str:
    from builder.verify import verification_images

    return base64.b64encode(verification_images()[0]).decode()


def test_health_on_both_ports(client):
    inference, model = client.health()
    assert inference.message == "The inference server is running."
    assert model.message == "The model server is running."


def test_the_initial_set_is_the_repository_up_to_the_maximum(client):
    # Four models, at most three loaded: the first three by name.
    loaded = {m.name: m.library for m in client.loaded_models().models}
    assert loaded == {MOBILECLIP: "open_clip", TIMM: "timm", E5: "sentence_transformers"}
    states = {m.name: m.state for m in client.repository_models().models}
    assert states == {MOBILECLIP: "READY", TIMM: "READY", E5: "READY", CLIP: "UNAVAILABLE"}


@pytest.mark.parametrize("return_numpy", [False, True])
def test_embed_text(served, reference, return_numpy):
    client = ingrain.Client(served.url, served.model_url, return_numpy=return_numpy)
    response = client.embed_text(name=E5, text=["a cat", "a dog"], n_dims=64)
    embeddings = np.asarray(response.embeddings)
    assert isinstance(response.embeddings, np.ndarray) == return_numpy
    full = reference.encode(["a cat", "a dog"], normalize_embeddings=False)[:, :64]
    assert cosines(embeddings, full).min() >= 0.9999
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert response.processing_time_ms > 0


@pytest.mark.parametrize("return_numpy", [False, True])
def test_image_calls(served, return_numpy):
    client = ingrain.Client(served.url, served.model_url, return_numpy=return_numpy)
    image = client.embed_image(name=MOBILECLIP, image=[image_b64()], image_download_headers={})
    assert np.asarray(image.embeddings).shape == (1, 32)
    both = client.embed(name=MOBILECLIP, text="a cat", image=image_b64(), n_dims=16)
    assert np.asarray(both.text_embeddings).shape == (1, 16)
    assert np.asarray(both.image_embeddings).shape == (1, 16)
    timm_probabilities = np.asarray(
        client.classify_image(name=TIMM, image=image_b64()).probabilities
    )
    assert timm_probabilities.shape == (1, len(LABELS))
    assert np.isclose(timm_probabilities.sum(), 1.0, atol=1e-5)
    zero_shot = np.asarray(client.classify_image(name=MOBILECLIP, image=image_b64()).probabilities)
    assert zero_shot.shape == (1, len(LABELS))


def test_model_metadata(client):
    assert client.model_classification_labels(name=TIMM).labels == LABELS
    assert client.model_embedding_dims(name=E5).embedding_size == 384
    assert client.model_embedding_dims(name=MOBILECLIP).embedding_size == 32


def test_metrics(client):
    def counts() -> dict[str, int]:
        return {s.name: int(s.inference_count or 0) for s in client.metrics().model_stats}

    before = counts()
    client.embed_text(name=E5, text=["counted", "twice"])
    client.embed_image(name=MOBILECLIP, image=image_b64())
    after = counts()
    assert after[E5] - before[E5] == 2
    assert after[f"{MOBILECLIP}/image_encoder"] - before[f"{MOBILECLIP}/image_encoder"] == 1
    stats = {s.name: s for s in client.metrics().model_stats}
    assert int(stats[E5].inference_stats["success"].count) >= 1


def test_unload_then_every_worker_refuses_with_the_same_error(client, served):
    assert client.unload_model(name=E5).message == f"Model {E5} unloaded successfully."
    errors = set()
    for _ in range(20):
        with pytest.raises(IngrainWebException) as caught:
            client.embed_text(name=E5, text="x")
        errors.add((caught.value.status_code, caught.value.text))
    assert errors == {(400, f"Model {E5} is not loaded; load it with /load_model")}
    by_worker = served.answers_by_worker("/embed_text", {"name": E5, "text": "x"})
    assert len(by_worker) == 2 and set().union(*by_worker.values()) == {400}, by_worker
    with pytest.raises(IngrainWebException) as again:
        client.unload_model(name=E5)
    assert again.value.status_code == 404
    states = {m.name: m.state for m in client.repository_models().models}
    assert states[E5] == "UNAVAILABLE"


def test_load_returns_a_model_that_every_worker_serves(client, served, reference):
    model = client.load_model(name=E5, library="sentence_transformers")
    for _ in range(10):
        embeddings = np.asarray(model.embed_text(text="a cat").embeddings)
        assert cosines(embeddings, reference.encode(["a cat"])).min() >= 0.9999
    body = {"name": E5, "library": "sentence_transformers"}
    by_worker = served.answers_by_worker("/embed_text", {"name": E5, "text": "x"})
    assert len(by_worker) == 2 and set().union(*by_worker.values()) == {200}, by_worker
    again = requests.post(served.model_url + "/load_model", json=body, timeout=60)
    assert again.json() == {"message": f"Model {E5} is already loaded."}


def test_loading_past_the_maximum_lists_what_is_loaded(client):
    with pytest.raises(IngrainWebException) as caught:
        client.load_model(name=CLIP, library="open_clip")
    assert caught.value.status_code == 400
    assert "Maximum number of loaded models (3)" in caught.value.text
    assert E5 in caught.value.text and "/unload_model" in caught.value.text


def test_model_object_methods(client):
    model = client.load_model(name=TIMM, library="timm")
    assert np.asarray(model.classify_image(image=image_b64()).probabilities).shape == (1, 5)
    assert model.unload().message == f"Model {TIMM} unloaded successfully."
    assert model.load().message == f"Model {TIMM} loaded successfully."
    clip = client.load_model(name=MOBILECLIP, library="open_clip")
    assert np.asarray(clip.embed_image(image=image_b64()).embeddings).shape == (1, 32)
    assert np.asarray(clip.embed(text=["a", "b"]).text_embeddings).shape == (2, 32)


def test_delete_removes_the_model_from_every_worker_and_the_disk(client, repository):
    victim = TIMM
    assert client.delete_model(name=victim).message == f"Model {victim} deleted successfully."
    assert victim not in [m.name for m in client.repository_models().models]
    with pytest.raises(IngrainWebException) as caught:
        client.embed_text(name=victim, text="x")
    assert caught.value.status_code == 404
    with pytest.raises(IngrainWebException) as again:
        client.delete_model(name=victim)
    assert again.value.status_code == 404


def test_loading_a_model_that_cannot_be_built_is_a_clear_400(client):
    with pytest.raises(IngrainWebException) as caught:
        client.load_model(name="no-such-org/no-such-model", library="sentence_transformers")
    assert caught.value.status_code == 400
    assert "cannot build 'no-such-org/no-such-model'" in caught.value.text


def test_bad_management_requests(client, served):
    wrong_library = {"name": E5, "library": "tensorflow"}
    response = requests.post(served.model_url + "/load_model", json=wrong_library, timeout=10)
    assert response.status_code == 400 and "must be one of" in response.json()["error"]
    client.unload_model(name=MOBILECLIP)
    mismatch = {"name": CLIP, "library": "timm"}
    response = requests.post(served.model_url + "/load_model", json=mismatch, timeout=10)
    assert response.status_code == 400
    assert "is a open_clip model, not timm" in response.json()["error"]
    response = requests.post(served.model_url + "/unload_model", json={}, timeout=10)
    assert response.status_code == 400 and '"name" is required' in response.json()["error"]
