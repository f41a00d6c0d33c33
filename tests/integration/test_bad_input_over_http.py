"""What only real gunicorn shows about bad input: a chunked body with no Content-Length is cut
off at the limit, and no bad request or bad image kills a worker."""

from __future__ import annotations

import requests

from tests.conftest import CLIP, MINILM
from tests.unit.api.test_clip import BAD_IMAGES
from tests.unit.api.test_embed_text import BAD_REQUESTS


def test_a_body_over_the_limit_without_content_length_is_refused(server):
    def chunks():
        yield b'{"name": "x", "text": "'
        for _ in range(30):
            yield b"a" * 10_000
        yield b'"}'

    response = requests.post(server.url + "/embed_text", data=chunks(), timeout=30)
    assert response.status_code == 413
    assert "larger than 200000 bytes" in response.json()["error"]


def test_bad_input_never_kills_a_worker(server):
    before = server.worker_pids()
    for raw, _, _ in BAD_REQUESTS:
        requests.post(server.url + "/embed_text", data=raw, timeout=30)
    assert server.worker_pids() == before
    assert server.post("/embed_text", {"name": MINILM, "text": "still alive"}).status_code == 200
    assert "Traceback" not in server.log.read_text()


def test_bad_images_never_kill_a_worker(server, image_host):
    before = server.worker_pids()
    for source, _ in BAD_IMAGES:
        server.post("/embed_image", {"name": CLIP, "image": source.format(host=image_host)})
    assert server.worker_pids() == before
    assert server.post("/embed_image", {"name": CLIP, "image": f"{image_host}/cat.png"}).ok
