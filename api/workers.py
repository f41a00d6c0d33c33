"""gunicorn's gthread worker, hardened against slow clients.

Stock gthread hands a connection to a request thread as soon as its first bytes arrive; the
thread then blocks reading the rest of the headers and the body, with no deadline. A few
hundred clients that send part of a request and stall hold every thread, and the worker stops
answering. Here the worker's event loop (which never blocks) gathers each request's bytes
first: a thread takes the connection only once its whole request is in memory, and a
connection whose request is not complete within the read timeout is closed. Reads a thread
still makes (a body beyond what the loop gathers, `Expect: 100-continue`) run under the same
deadline, so no client holds a thread longer than that.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from functools import partial

from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker

HEADER_ALLOWANCE = 64 * 1024
# Most request bytes one worker holds for connections still arriving; beyond it, requests are
# read by their thread (under the deadline) instead of by the loop.
GATHER_BUDGET = 256 * 1024 * 1024
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?=\r\n|$)", re.I)
CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r\n]*chunked", re.I)
EXPECT_CONTINUE = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue", re.I)


class ReadTimeout(NoMoreData, TimeoutError):
    """The client did not send its request within the read timeout.

    A NoMoreData to gunicorn (which then closes the connection quietly) and a TimeoutError to
    the app (which answers 408)."""

    def __str__(self) -> str:
        return "the client did not send the whole request in time"


class DeadlineSocket(socket.socket):
    """A socket whose reads fail once the current request's deadline has passed."""

    deadline: float | None = None

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.deadline is None:
            return super().recv(size, flags)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout()
        previous = self.gettimeout()
        self.settimeout(remaining if previous is None else min(previous, remaining))
        try:
            return super().recv(size, flags)
        except TimeoutError:
            if time.monotonic() >= self.deadline:
                raise ReadTimeout() from None
            raise
        finally:
            self.settimeout(previous)


def request_complete(data: bytes | bytearray, limit: int) -> bool:
    """Whether `data` holds a whole HTTP/1 request, or one a thread must read on (a body
    announced larger than `limit`, or an `Expect: 100-continue`)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = bytes(data[:end])
    if EXPECT_CONTINUE.search(head):
        return True  # the client waits for "100 Continue" before its body
    length = CONTENT_LENGTH.search(head)
    if length is not None:
        size = int(length.group(1))
        return size > limit or len(data) - end - 4 >= size
    if CHUNKED.search(head):
        return _chunks_complete(data, end + 4, limit)
    return True


def _chunks_complete(data: bytes | bytearray, position: int, limit: int) -> bool:
    """Walk the chunk framing; malformed or oversized framing counts as complete (the thread's
    parser refuses it)."""
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return False
        try:
            size = int(bytes(data[position:line_end]).split(b";")[0].strip(), 16)
        except ValueError:
            return True
        if size == 0:
            return data.find(b"\r\n\r\n", line_end) >= 0  # the end of the trailers
        if size > limit:
            return True
        position = line_end + 2 + size + 2
        if position > len(data):
            return False


class GatheringWorker(ThreadWorker):
    """gthread whose event loop reads each request whole before a thread serves it."""

    def init_process(self) -> None:
        limits = self.app.settings.limits
        self.read_timeout = limits.read_timeout_s
        self.gather_limit = limits.max_body_bytes + HEADER_ALLOWANCE
        self.gathering: dict[object, float] = {}  # connection -> deadline, oldest first
        self.gathered_bytes = 0
        super().init_process()

    def enqueue_req(self, conn) -> None:
        if self.cfg.is_ssl or getattr(conn, "gathered", False):
            super().enqueue_req(conn)
            return
        if not isinstance(conn.sock, DeadlineSocket):
            conn.sock = DeadlineSocket(fileno=conn.sock.detach())
        conn.sock.setblocking(False)
        # Bytes a previous request's body read took ahead belong to this request.
        conn.buffer = bytearray(conn.parser.unreader.take_buffered() if conn.parser else b"")
        conn.sock.deadline = time.monotonic() + self.read_timeout
        self.gathered_bytes += len(conn.buffer)
        if request_complete(conn.buffer, self.gather_limit):
            self._hand_over(conn)
            return
        self.gathering[conn] = conn.sock.deadline
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _readable(self, conn, sock: socket.socket) -> None:
        try:
            data = sock.recv(64 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if conn.buffer:  # a request cut short: its thread answers it (4xx) or drops it
                self._stop_gathering(conn)
                self._hand_over(conn)
            else:
                self._drop(conn)
            return
        conn.buffer += data
        self.gathered_bytes += len(data)
        if (
            request_complete(conn.buffer, self.gather_limit)
            or len(conn.buffer) > self.gather_limit
            or self.gathered_bytes > GATHER_BUDGET
        ):
            self._stop_gathering(conn)
            self._hand_over(conn)

    def _stop_gathering(self, conn) -> None:
        self.gathering.pop(conn, None)
        self.poller.unregister(conn.sock)

    def _hand_over(self, conn) -> None:
        """To a request thread, with the gathered bytes in front of the parser."""
        conn.data_ready = True
        conn.gathered = True
        super().enqueue_req(conn)

    def handle(self, conn):
        if getattr(conn, "gathered", False):
            conn.gathered = False
            data, conn.buffer = bytes(conn.buffer), bytearray()
            self.method_queue.defer(self._release, len(data))
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(data)
        return super().handle(conn)

    def _release(self, size: int) -> None:
        self.gathered_bytes -= size

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.gathering:
            conn, deadline = next(iter(self.gathering.items()))
            if deadline > now:
                break
            self._drop(conn)

    def _drop(self, conn) -> None:
        """Close a connection whose request never arrived whole."""
        self._stop_gathering(conn)
        self.gathered_bytes -= len(conn.buffer)
        self.nr_conns -= 1
        conn.close()
