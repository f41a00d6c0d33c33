"""Faults: a worker killed under load, SIGTERM with requests in flight, a corrupted engine."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from runtime.repository import slugify
from tests.conftest import CLIP, MINILM, copy_tree, start_server, stop_server

LONG = ["a sentence long enough to keep the engine busy for a while " * 20] * 16


def wait_until(check, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_worker_killed_under_load_is_replaced_and_others_keep_serving(engines, tmp_path):
    server = start_server(engines, tmp_path / "server.log", "--workers", "2", "--preload", MINILM)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                statuses.append(
                    server.post("/embed_text", {"name": MINILM, "text": "a cat"}).status_code
                )
            except requests.ConnectionError:
                statuses.append(0)

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(load)
            # Counted in answers, not seconds, so that a busy machine only makes it slower.
            wait_until(lambda: len(statuses) >= 10)
            victim = server.kill_a_worker()
            killed_at = len(statuses)
            wait_until(lambda: len(statuses) >= killed_at + 20)
            stop.set()
        failed = len([s for s in statuses if s != 200])
        assert victim not in server.worker_pids() and len(server.worker_pids()) == 2
        assert len(statuses) >= killed_at + 20
        # Only what the killed worker held can fail: at most one request per client thread.
        assert failed <= 4, statuses
        assert server.post("/embed_text", {"name": MINILM, "text": "after"}).status_code == 200
    finally:
        stop.set()
        stop_server(server)


def all_read_by_the_server(port: int, connections: list[socket.socket]) -> bool:
    """Whether the server's end of every connection exists and has nothing left to read (its
    receive queue in Linux's /proc/net/tcp is empty)."""
    ours = {f"{connection.getsockname()[1]:04X}" for connection in connections}
    unread = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, _, queues = line.split()[1:5]
        if local.endswith(f":{port:04X}") and remote.split(":")[1] in ours:
            unread[remote.split(":")[1]] = int(queues.split(":")[1], 16)
    return set(unread) == ours and not any(unread.values())


def test_sigterm_lets_in_flight_requests_finish_and_exits_cleanly(engines, tmp_path):
    """Requests whose last body byte is still to come when SIGTERM arrives are in flight by
    construction; they must still be answered."""
    server = start_server(engines, tmp_path / "server.log", "--preload", MINILM)
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"name": MINILM, "text": LONG}).encode()
    head = (
        f"POST /embed_text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    connections = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(4)]
    for connection in connections:
        connection.sendall(head + body[:-1])
    # The worker takes the connections (they cannot finish without us): it has read all we sent.
    deadline = time.monotonic() + 60
    while not all_read_by_the_server(port, connections):
        assert time.monotonic() < deadline, "the worker did not read the requests within 60 s"
        time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    answers = []
    for connection in connections:
        connection.sendall(body[-1:])
        answers.append(connection.makefile("rb").readline())
        connection.close()
    assert answers == [b"HTTP/1.1 200 OK\r\n"] * 4
    assert server.process.wait(timeout=30) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/health", timeout=2)
    assert "Traceback" not in server.log.read_text()


def test_a_corrupted_engine_fails_clearly_and_other_models_keep_serving(engines, tmp_path):
    root = tmp_path / "engines"
    for name in (MINILM, CLIP):
        copy_tree(engines / slugify(name), root / slugify(name))
    (root / slugify(CLIP) / "image.onnx").write_bytes(b"\x08\x01garbage")
    server = start_server(root, tmp_path / "server.log", "--workers", "2")
    try:
        broken = server.post("/embed_text", {"name": CLIP, "text": "a cat"})
        assert broken.status_code == 500
        assert "image.onnx" in broken.json()["error"] and "Traceback" not in broken.text
        assert server.post("/embed_text", {"name": MINILM, "text": "a cat"}).status_code == 200
        assert requests.get(server.url + "/health", timeout=5).ok
    finally:
        stop_server(server)
