"""Test images (PNG, JPEG, other formats, a decompression bomb) and a loopback host serving
them, good and bad, for the image routes' URL downloads."""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import time
import typing
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int, height: int, seed: int = 1) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png(width, height, seed))).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def encoded(image_format: str, width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png(width, height, 4))).save(buffer, format=image_format)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


IMAGES = {"/cat.png": png(64, 48), "/dog.jpg": jpeg(40, 90), "/wide.png": png(300, 30, 2)}


class ImageHandler(BaseHTTPRequestHandler):
    seen_headers: typing.ClassVar[dict[str, dict[str, str]]] = {}

    def do_GET(self):
        ImageHandler.seen_headers[self.path] = dict(self.headers)
        routes = {
            "/missing": (404, b"nope"),
            "/text": (200, b"this is not an image at all"),
            "/truncated.png": (200, IMAGES["/cat.png"][:300]),
            "/huge.png": (200, png(400, 400, 3)),
            "/bomb.png": (200, png_header_only(30000, 30000)),
        }
        if self.path in IMAGES:
            self._send(200, IMAGES[self.path])
        elif self.path in routes:
            self._send(*routes[self.path])
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif self.path == "/slow":
            time.sleep(5)  # the sleep is the behaviour: a host slower than --download-timeout
            self._send(200, IMAGES["/cat.png"])
        else:
            self._send(404, b"")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # The server under test may give up waiting (timeouts), as it should.
        with contextlib.suppress(BrokenPipeError):
            self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def image_host() -> Iterator[str]:
    """ImageHandler on loopback; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
