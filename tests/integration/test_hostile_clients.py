"""Hostile clients over real gunicorn: slow connections, drip-fed downloads, huge texts,
malformed requests. Every attack here is bounded and stays on loopback."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from runtime.repository import slugify
from tests.conftest import CLIP, MINILM, copy_tree, start_server, stop_server
from tests.images import png

READ_TIMEOUT = 8
DOWNLOAD_TIMEOUT = 3
ANNOUNCED = 100_000
ONE_SENTENCE = {"name": MINILM, "text": "a cat sits on the mat"}


@pytest.fixture(scope="module")
def hostile(engines, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    server = start_server(
        engines,
        log,
        *("--workers", "2", "--threads", "4", "--preload", MINILM, "--preload", CLIP),
        *("--read-timeout", str(READ_TIMEOUT), "--download-timeout", str(DOWNLOAD_TIMEOUT)),
        "--allow-private-addresses",
    )
    yield server
    stop_server(server)


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def raw_request(server, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are, end the sending side, and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as connection:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    return status, answer.split(b"\r\n\r\n", 1)[-1]


# --- 1. slow clients ----------------------------------------------------------------------------


def stalled_connections(server, count: int, prefix: bytes) -> list[socket.socket]:
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
        connection.sendall(prefix)
        connections.append(connection)
    return connections


def is_open(connection: socket.socket) -> bool:
    connection.setblocking(False)
    try:
        return connection.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        connection.setblocking(True)


def test_stalled_clients_neither_freeze_the_server_nor_stay_connected(hostile):
    body = b'{"name": "%s", "text": "a stalled request body"}' % MINILM.encode()
    in_body = (
        b"POST /embed_text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
    )
    in_headers = b"POST /embed_text HTTP/1.1\r\nHost: x\r\nContent-Ty"
    stalled = stalled_connections(hostile, 200, in_body)
    stalled += stalled_connections(hostile, 200, in_headers)
    try:
        # The 400 stalled connections are far more than the 8 request threads; answers come
        # while every one of them is still held open, i.e. well before the read deadline.
        for _ in range(4):
            assert requests.get(hostile.url + "/health", timeout=READ_TIMEOUT).ok
            answer = requests.post(hostile.url + "/embed_text", json=ONE_SENTENCE, timeout=10)
            assert answer.status_code == 200
        assert all(is_open(connection) for connection in stalled)
        # Past the deadline the server closes them without an answer.
        for connection in stalled:
            connection.settimeout(READ_TIMEOUT + 30)
            with contextlib.suppress(ConnectionResetError):
                assert connection.recv(1024) == b""
    finally:
        for connection in stalled:
            connection.close()


HEAD = b"POST / HTTP/1.1\r\nHost: x\r\n"
TE = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("pieces", "complete"),
    [
        ([HEAD + b"Content-Length: 5\r\n\r\nab", b"cde"], True),
        ([HEAD + b"Content-Length: 5\r\n\r\nab"], False),
        ([HEAD + b"\r\n"], True),
        ([HEAD], False),
        ([TE + b"3\r\nabc\r\n", b"0\r\n", b"\r\n"], True),
        ([TE + b"3\r\nabc\r\n", b"0\r\n"], False),
        ([TE + b"3\r\nab"], False),
        ([TE + b"1\r\na\r\n" * 100, b"0\r\nX: y\r\n", b"\r\n"], True),
        ([TE + b"zz\r\nab"], True),  # malformed: the thread's parser refuses it
        ([TE + b"fffffffff\r\nab"], True),  # beyond the limit: refused at once
        ([HEAD + b"Content-Length: 5000\r\n\r\n"], True),
        ([HEAD + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"], True),
        ([b"x" * 70_000], True),  # headers beyond any limit
    ],
)
def test_the_event_loop_knows_when_a_request_is_whole(pieces, complete):
    from api.server.workers import Arriving

    arriving = Arriving(b"", limit=1000)
    for piece in pieces:
        arriving.data += piece
        done = arriving.complete()
    assert done is complete


def test_a_body_beyond_the_gathered_part_still_answers(hostile):
    """Bodies announced larger than --max-body-bytes are handed to a thread at once: 413."""
    status, answer = raw_request(
        hostile, b"POST /embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{"
    )
    assert status == 413 and b"larger than" in answer


def test_a_body_its_thread_waits_for_ends_at_the_deadline_with_a_408(hostile):
    """`Expect: 100-continue` bodies are read by their thread, under the same deadline."""
    head = (
        b"POST /embed_text HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(JSON_BODY)
    )
    with socket.create_connection(("127.0.0.1", port_of(hostile)), timeout=READ_TIMEOUT + 30) as c:
        c.sendall(head + JSON_BODY[:10])
        answer = b""
        while chunk := c.recv(65536):
            answer += chunk
    assert b"HTTP/1.1 408" in answer and b"did not arrive within" in answer


def test_keepalive_and_pipelined_requests_are_all_answered(hostile):
    body = b'{"name": "%s", "text": "pipelined"}' % MINILM.encode()
    one = b"POST /embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    status, _ = raw_request(hostile, one + one + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    with socket.create_connection(("127.0.0.1", port_of(hostile)), timeout=30) as connection:
        closing = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        connection.sendall(one + one + closing)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    with requests.Session() as session:
        for _ in range(20):
            assert session.post(hostile.url + "/embed_text", json=ONE_SENTENCE).ok


def client_gone_drops(server) -> float:
    text = requests.get(server.url + "/metrics/prometheus", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ingrain_client_gone_drops_total" and sample.labels == {
                "model": MINILM,
                "tower": "text_encoder",
            }:
                return sample.value
    return 0.0


def test_requests_whose_client_left_are_dropped_before_execution(hostile):
    """A client that sends a request and closes the connection gets no execution: the batcher
    asks the connection just before executing and counts the drop. Long requests keep the
    executors busy meanwhile; they and later requests are answered."""
    before, gone = client_gone_drops(hostile), 6
    long_text = " ".join(["a long sentence about a cat that sits on a mat"] * 6)
    busy = {"name": MINILM, "text": [f"{i} {long_text}" for i in range(32)]}
    body = json.dumps(ONE_SENTENCE).encode()
    request = b"POST /embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = [pool.submit(hostile.post, "/embed_text", busy) for _ in range(2)]
        for _ in range(gone):
            with socket.create_connection(("127.0.0.1", port_of(hostile)), timeout=30) as c:
                c.sendall(request + body)
        assert [answer.result(timeout=120).status_code for answer in running] == [200, 200]
    # Counted as each worker's executor reaches them; a request waiting for a thread comes last.
    deadline = time.monotonic() + 60
    while client_gone_drops(hostile) < before + gone and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client_gone_drops(hostile) == before + gone
    assert requests.post(hostile.url + "/embed_text", json=ONE_SENTENCE, timeout=30).ok


def drain(connection: socket.socket, timeout_s: float) -> int:
    """Read until the server closes the connection; how many bytes came."""
    connection.settimeout(timeout_s)
    received = 0
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            received += len(chunk)
    return received


def open_server_ends(server, connections: list[socket.socket]) -> int:
    """How many of these connections the server still holds open (ESTABLISHED in Linux's
    /proc/net/tcp); a connection it has closed is gone or in a closing state there."""
    ports = {f"{connection.getsockname()[1]:04X}" for connection in connections}
    local = f":{port_of(server):04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        ours, theirs, state = line.split()[1:4]
        count += ours.endswith(local) and theirs.split(":")[1] in ports and state == "01"
    return count


def test_a_client_that_never_reads_its_answers_is_cut_off(hostile):
    """Answers are written under the read timeout: clients that send requests and never read
    the (large) answers lose their connections instead of holding the threads that write."""
    texts = {"name": MINILM, "text": [f"text number {i}" for i in range(256)]}
    answer_bytes = len(hostile.post("/embed_text", texts).content)
    body = json.dumps(texts).encode()
    one = b"POST /embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    pipelined, stalled = 4, []
    try:
        for _ in range(8):  # one per request thread of the server (2 workers x 4)
            connection = socket.socket()
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            connection.connect(("127.0.0.1", port_of(hostile)))
            connection.sendall((one + body) * pipelined)
            stalled.append(connection)
        deadline = time.monotonic() + 300
        while open_server_ends(hostile, stalled) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert open_server_ends(hostile, stalled) == 0
        assert requests.post(hostile.url + "/embed_text", json=ONE_SENTENCE, timeout=60).ok
        # What each connection still delivers is what the kernel had buffered, then its end.
        for connection in stalled:
            assert drain(connection, READ_TIMEOUT * 3) < pipelined * answer_bytes
    finally:
        for connection in stalled:
            connection.close()


# --- 2. drip-fed downloads ----------------------------------------------------------------------


class DripHandler(BaseHTTPRequestHandler):
    """Announces ANNOUNCED bytes and sends one every 0.5 s (in the body, or in the headers)."""

    connections = 0
    lock = threading.Lock()

    def do_GET(self):
        with DripHandler.lock:
            DripHandler.connections += 1
        # The server under test cuts the download off, as it should.
        with contextlib.suppress(OSError):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % ANNOUNCED)
            if self.path == "/body":
                self.wfile.write(b"\r\n")
            for _ in range(ANNOUNCED):
                self.wfile.write(b"x-drip: x\r\n" if self.path == "/headers" else b"x")
                self.wfile.flush()
                time.sleep(0.5)
        self.close_connection = True

    def finish(self):
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server answering with `handler`; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def drip() -> Iterator[str]:
    with http_server(DripHandler) as url:
        yield url


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_drip_fed_download_ends_at_the_deadline(hostile, drip, where):
    # Without a deadline that holds however slowly bytes come, this waits ANNOUNCED * 0.5 s.
    answer = requests.post(
        hostile.url + "/embed_image",
        json={"name": CLIP, "image": f"{drip}/{where}"},
        timeout=DOWNLOAD_TIMEOUT * 10,
    )
    assert answer.status_code == 400
    assert "could not be fetched" in answer.json()["error"]


def test_inline_images_and_texts_never_wait_behind_downloads(hostile, drip):
    inline = base64.b64encode(png(16, 16)).decode()
    finished: dict[str, float] = {}

    def call(key: str, route: str, body: dict) -> int:
        answer = requests.post(hostile.url + route, json=body, timeout=DOWNLOAD_TIMEOUT * 10)
        finished[key] = time.monotonic()
        return answer.status_code

    before = DripHandler.connections
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        dripping = {"name": CLIP, "image": [f"{drip}/body"] * 8}
        drips = [pool.submit(call, f"drip{i}", "/embed_image", dripping) for i in range(3)]
        # Every fetch thread of (at least) one worker is busy dripping before the other calls.
        while DripHandler.connections - before < 8:
            time.sleep(0.05)
        images = {"name": CLIP, "image": [inline, f"data:image/png;base64,{inline}"]}
        assert call("inline", "/embed_image", images) == 200
        assert call("text", "/embed_text", ONE_SENTENCE) == 200
        assert [future.result(timeout=120) for future in drips] == [400] * 3
    assert max(finished["inline"], finished["text"]) < min(finished[f"drip{i}"] for i in range(3))


# --- 4. malformed requests ----------------------------------------------------------------------

CHUNKED = b"POST /embed_text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
JSON_BODY = b'{"name": "%s", "text": "a"}' % MINILM.encode()


@pytest.mark.parametrize(
    "data",
    [
        CHUNKED + b"zz\r\n" + JSON_BODY + b"\r\n0\r\n\r\n",
        CHUNKED + b"ffffffffffffffffffff\r\n" + JSON_BODY + b"\r\n0\r\n\r\n",
        CHUNKED + b"%x\r\n" % len(JSON_BODY) + JSON_BODY[:10],
        b"POST /embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + JSON_BODY[:10],
    ],
    ids=["bad-size", "huge-size", "truncated-chunk", "truncated-length"],
)
def test_malformed_bodies_are_a_400(hostile, data):
    status, answer = raw_request(hostile, data)
    assert status == 400, answer
    assert b'"error"' in answer and b"Traceback" not in answer


@pytest.mark.parametrize(
    "headers",
    [{"X Bad": "1"}, {"X:Bad": "1"}, {"X-Ok": "caf\u00e9"}, {"": "1"}, {"X-Ok": "a\r\nb: c"}],
    ids=["space", "colon", "non-ascii", "empty", "line-break"],
)
def test_malformed_download_headers_are_a_400(hostile, headers):
    body = {"name": CLIP, "image": "http://127.0.0.1:1/a.png", "imageDownloadHeaders": headers}
    answer = hostile.post("/embed_image", body)
    assert answer.status_code == 400
    assert "imageDownloadHeaders" in answer.json()["error"]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999/png", "http://127.0.0.1:abc/png", "http://[::1/png", "http:///png"],
)
def test_malformed_image_urls_are_a_400(hostile, url):
    answer = hostile.post("/embed_image", {"name": CLIP, "image": url})
    assert answer.status_code == 400
    assert "could not be fetched" in answer.json()["error"]


class RedirectHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", "http://[::1/broken")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_to_a_malformed_location_is_a_400(hostile):
    with http_server(RedirectHandler) as url:
        answer = hostile.post("/embed_image", {"name": CLIP, "image": f"{url}/a.png"})
    assert answer.status_code == 400
    assert "could not be fetched" in answer.json()["error"]


# --- 5. smaller findings ------------------------------------------------------------------------


def test_a_json_body_with_a_utf8_bom_is_read(hostile):
    answer = requests.post(
        hostile.url + "/embed_text",
        data=b"\xef\xbb\xbf" + JSON_BODY,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200 and len(answer.json()["embeddings"]) == 1


def test_head_health(hostile):
    answer = requests.head(hostile.url + "/health", timeout=10)
    assert answer.status_code == 200 and answer.content == b""


def test_every_failed_download_answers_the_same(hostile, drip):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    failing = [
        f"http://127.0.0.1:{closed_port}/a.png",  # nothing listens
        f"{drip}/body",  # times out
        hostile.url + "/missing.png",  # HTTP 404
        hostile.url + "/health",  # not an image
        "http://169.254.169.254/latest/meta-data/",  # refused address
        "http://no-such-host.invalid/a.png",  # does not resolve
    ]
    messages = {
        hostile.post("/embed_image", {"name": CLIP, "image": url}).json()["error"]
        for url in failing
    }
    assert len(messages) == 1, messages
    assert "server log" in messages.pop()
    assert "169.254.169.254" in hostile.log.read_text()  # the reason is logged


def refusal(limits, url: str, caplog) -> str:
    """The logged reason an image URL was not fetched (the client only sees the generic one)."""
    from runtime.preprocessing.fetch import DOWNLOAD_FAILED, ImageFetcher

    caplog.clear()
    with caplog.at_level(logging.WARNING, "runtime.preprocessing.fetch"):
        [result] = ImageFetcher(limits).fetch_all([url], {})
    assert isinstance(result, Exception) and str(result) == DOWNLOAD_FAILED
    return caplog.text


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
        "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
        "[::ffff:169.254.169.254]",
        "[64:ff9b::6464:64c8]",  # NAT64 of 100.100.100.200
    ],
)
def test_ipv6_forms_of_always_blocked_addresses_are_blocked(host, caplog):
    from runtime.preprocessing.fetch import FetchLimits

    assert "not allowed" in refusal(FetchLimits(allow_private=True), f"http://{host}/", caplog)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[::1]", "10.1.2.3", "192.168.0.1", "[64:ff9b::7f00:1]", "[2002:a00::]"]
)
def test_private_destinations_are_refused_unless_allowed(host, caplog):
    from runtime.preprocessing.fetch import FetchLimits

    assert "not allowed" in refusal(FetchLimits(), f"http://{host}:1/a.png", caplog)
    allowed = refusal(FetchLimits(allow_private=True, timeout_s=1), f"http://{host}:1/", caplog)
    assert "not allowed" not in allowed


def test_a_deleted_model_drops_its_loaded_workers_series(engines, tmp_path):
    root = tmp_path / "engines"
    copy_tree(engines / slugify(MINILM), root / slugify(MINILM))
    server = start_server(root, tmp_path / "server.log", "--workers", "2", "--preload", MINILM)
    try:
        series = f'ingrain_model_loaded_workers{{model="{MINILM}"}}'

        def exposition() -> str:
            return requests.get(server.url + "/metrics/prometheus", timeout=10).text

        def settles(done) -> bool:
            """Workers preload, and follow the loaded set, each in its own time."""
            deadline = time.monotonic() + 60
            while not done() and time.monotonic() < deadline:
                time.sleep(0.2)
            return done()

        assert settles(lambda: f"{series} 2.0" in exposition())
        answer = requests.delete(
            server.model_url + "/delete_model", json={"name": MINILM}, timeout=30
        )
        assert answer.status_code == 200
        assert settles(lambda: series not in exposition())
    finally:
        stop_server(server)


# --- 3. long texts ------------------------------------------------------------------------------

SAMPLES = [
    "The quick brown fox jumps over the lazy dog. ",
    "Größere Übungen über schöne Äpfel, naïve Cafés und Straßen. ",
    "机器学习是人工智能的一个分支\uff0c研究计算机如何学习。",
    "日本語のテキストとカタカナ、ひらがなを混ぜた文章です。",
    "النص العربي يكتب من اليمين إلى اليسار مع علامات الترقيم. ",
    "emoji 🙂🚀👩‍👩‍👧 and symbols ™ © ½ → ∑ ",
    "supercalifragilisticexpialidocious" * 5 + " ",  # a word longer than WordPiece reads
    "   \t\n  ",  # whitespace, which yields no tokens
    "\u200b\u0000\u0007",  # characters the normaliser drops
    "!!!???...,,,;;;",
]


def long_texts() -> list[str]:
    import random

    rng = random.Random(0)
    texts = []
    for length in (1, 100, 1500, 2047, 2048, 2049, 3000, 5000, 20_000, 60_000):
        for sample in SAMPLES:
            texts.append((sample * (length // len(sample) + 1))[:length])
        mixed = "".join(rng.choice(SAMPLES) for _ in range(length // 20 + 1))
        texts.append(mixed[:length])
    # Tokens only at the far end: the first parts hold none, so they must be widened.
    texts.append(" " * 50_000 + SAMPLES[0] * 10)
    texts.append("\u200b" * 30_000 + SAMPLES[2] * 10 + " " * 30_000)
    return texts


def byte_level_bpe(tmp_path):
    """A GPT-2 style byte-level BPE, trained here on the samples."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(SAMPLES * 50, trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["wordpiece", "byte-level-bpe"])
def test_long_texts_give_the_ids_of_the_whole_text(minilm_source, tmp_path, side, kind):
    from pathlib import Path

    from tokenizers import Tokenizer

    from runtime.preprocessing.tokenizer import CHARS_PER_TOKEN, TextTokenizer, readable_parts
    from runtime.repository.manifest import TokenizerSpec

    directory = Path(minilm_source) if kind == "wordpiece" else byte_level_bpe(tmp_path)
    spec = TokenizerSpec(file="tokenizer.json", max_length=256, truncation_side=side)
    served = TextTokenizer(directory, spec)
    whole = Tokenizer.from_file(str(directory / "tokenizer.json"))
    whole.enable_truncation(256, direction=side)
    whole.no_padding()
    texts = long_texts()
    expected = [encoding.ids for encoding in whole.encode_batch(texts)]
    assert served.token_ids(texts) == expected
    # The work is bounded: ordinary long texts are cut to the first window.
    counter = Tokenizer.from_file(str(directory / "tokenizer.json"))
    counter.no_truncation()
    counter.no_padding()
    parts = readable_parts(counter, [SAMPLES[0] * 2000, SAMPLES[2] * 3000], 256, side)
    assert max(map(len, parts)) <= 256 * CHARS_PER_TOKEN
