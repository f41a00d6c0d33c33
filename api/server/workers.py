"""gunicorn's gthread worker, hardened against slow clients.

Stock gthread hands a connection to a request thread as soon as its first bytes arrive; the
thread then blocks reading the rest of the headers and the body, with no deadline. A few
hundred clients that send part of a request and stall hold every thread, and the worker stops
answering. Here the worker's event loop (which never blocks) gathers each request's bytes
first: a thread takes the connection only once its whole request is in memory, and a
connection whose request is not complete within the read timeout is closed. Reads a thread
still makes (a body beyond what the loop gathers, `Expect: 100-continue`) run under the same
deadline, so no client holds a thread longer than that. The answer is written under the
same timeout (per write): a client that stops reading it loses the connection instead of
holding the thread.

While a request waits for the batcher, the batcher can ask whether its client is still there
(`client_gone`), and drops the request before execution when it is not.
"""

from __future__ import annotations

import errno
import re
import selectors
import socket
import time
from functools import partial

from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker

from runtime.batching.client import client_gone

HEADER_ALLOWANCE = 64 * 1024
MAX_CHUNK_LINE = 1024
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


class WriteTimeout(BrokenPipeError):
    """The client did not take the answer within the write timeout. A broken pipe to gunicorn,
    which then closes the connection quietly and frees the thread."""

    def __init__(self) -> None:
        super().__init__(errno.EPIPE, "the client did not read the answer in time")


class DeadlineSocket(socket.socket):
    """A socket whose reads fail once the current request's deadline has passed, and whose
    writes fail when one takes longer than the write timeout."""

    deadline: float | None = None
    write_timeout: float | None = None

    def sendall(self, data, flags: int = 0) -> None:
        """Send everything; the timeout bounds each send (no progress for that long), not the
        whole answer, so a client reading a large answer slowly but steadily gets all of it."""
        if self.write_timeout is None:
            return super().sendall(data, flags)
        previous = self.gettimeout()
        self.settimeout(self.write_timeout)
        try:
            with memoryview(data) as view, view.cast("B") as left:
                while left:
                    left = left[self.send(left, flags) :]
        except TimeoutError:
            raise WriteTimeout() from None
        finally:
            self.settimeout(previous)

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


class Arriving:
    """One request's bytes as they arrive, and whether they are all there. Each check resumes
    where the last one stopped, so gathering a request costs time linear in its size."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data = bytearray(data)
        self.limit = limit
        self._body: int | None = None  # where the body starts, once the headers are in
        self._length: int | None = None  # the Content-Length, when given
        self._chunk: int | None = None  # where the next chunk's size line starts (chunked)

    def complete(self) -> bool:
        """Whether the whole request is here, or a thread must take over anyway: a body
        announced beyond the limit, `Expect: 100-continue` (the client waits for an answer),
        or framing the thread's parser will refuse."""
        if self._body is None and not self._read_head():
            return len(self.data) > HEADER_ALLOWANCE
        if self._body is None:
            return True
        if self._length is not None:
            return self._length > self.limit or len(self.data) - self._body >= self._length
        return self._chunks_complete()

    def _read_head(self) -> bool:
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.data[:end])
        length = CONTENT_LENGTH.search(head)
        if EXPECT_CONTINUE.search(head):
            return True
        self._body = end + 4
        if length is not None:
            self._length = int(length.group(1))
        elif CHUNKED.search(head):
            self._chunk = self._body
        else:
            self._length = 0
        return True

    def _chunks_complete(self) -> bool:
        data = self.data
        while True:
            line_end = data.find(b"\r\n", self._chunk)
            if line_end < 0:
                return len(data) - self._chunk > MAX_CHUNK_LINE
            try:
                size = int(bytes(data[self._chunk : line_end]).split(b";")[0].strip(), 16)
            except ValueError:
                return True
            if size == 0:  # the end, once the trailers (usually none) are in
                return data.find(b"\r\n\r\n", line_end) >= 0 or (
                    len(data) - line_end > HEADER_ALLOWANCE
                )
            if size > self.limit:
                return True
            if line_end + 2 + size + 2 > len(data):
                return False
            self._chunk = line_end + 2 + size + 2


def has_left(conn) -> bool:
    """Whether the client has closed its side of the connection: the socket reads end-of-file
    and nothing it sent is still unread. Bytes waiting (a keep-alive or pipelined request), or
    none yet, are no disconnect; requests already read behind it are answered first. A client
    that half-closes (shutdown(SHUT_WR)) cannot be told from one that closed, so it counts as
    gone, as nginx treats it (499); HTTP clients do not half-close. Costs one non-blocking
    peek (while a request waits for the batcher, its thread has the socket in blocking mode,
    without a timeout)."""
    unreader = getattr(conn.parser, "unreader", None)
    if unreader is not None and unreader.buf.getbuffer().nbytes:
        return False
    try:
        # The plain socket's recv: DeadlineSocket's would apply the read deadline.
        return socket.socket.recv(conn.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, TimeoutError):
        return False
    except OSError:  # reset, or already closed
        return True


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
            conn.sock.write_timeout = self.read_timeout
        conn.sock.setblocking(False)
        # Bytes a previous request's body read took ahead belong to this request.
        ahead = conn.parser.unreader.take_buffered() if conn.parser else b""
        conn.arriving = Arriving(ahead, self.gather_limit)
        conn.sock.deadline = time.monotonic() + self.read_timeout
        self.gathered_bytes += len(ahead)
        if conn.arriving.complete():
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
            if conn.arriving.data:  # a request cut short: its thread answers (4xx) or drops it
                self._stop_gathering(conn)
                self._hand_over(conn)
            else:
                self._drop(conn)
            return
        conn.arriving.data += data
        self.gathered_bytes += len(data)
        if (
            conn.arriving.complete()
            or len(conn.arriving.data) > self.gather_limit
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
            data, conn.arriving = bytes(conn.arriving.data), None
            self.method_queue.defer(self._release, len(data))
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(data)
        # The batcher asks while the request waits for it (TLS sockets cannot be peeked).
        watched = client_gone.set(None if self.cfg.is_ssl else partial(has_left, conn))
        try:
            return super().handle(conn)
        finally:
            client_gone.reset(watched)

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
        self.gathered_bytes -= len(conn.arriving.data)
        self.nr_conns -= 1
        conn.close()
