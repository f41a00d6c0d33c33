"""The cheaper per-request primitives: a request's done signal (runtime.batching.batcher.Done)
and the log handler that writes each line with one write(2) (api.server.logs.LineHandler)."""

from __future__ import annotations

import io
import logging
import os
import re
import threading

from api.server.logs import EscapingFormatter, LineHandler
from runtime.batching.batcher import Done


def test_done_times_out_until_set_then_stays_set():
    done = Done()
    assert not done.is_set()
    assert done.wait(0.01) is False
    assert done.wait(0) is False
    done.set()
    done.set()  # a second set (a dropped request finished later) is harmless
    assert done.is_set()
    assert done.wait(0) is True
    assert done.wait() is True
    assert done.wait(0.01) is True


def test_done_wakes_a_waiting_thread():
    done = Done()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(done.wait(60)))
    waiter.start()
    done.set()
    waiter.join(60)
    assert woke == [True]


def test_done_set_from_many_threads_at_once_wakes_every_waiter():
    done = Done()
    woke: list[bool] = []
    waiters = [threading.Thread(target=lambda: woke.append(done.wait(60))) for _ in range(8)]
    setters = [threading.Thread(target=done.set) for _ in range(8)]
    for thread in waiters + setters:
        thread.start()
    for thread in waiters + setters:
        thread.join(60)
    assert woke == [True] * 8
    assert done.wait(0)


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    handler.setFormatter(EscapingFormatter("[%(process)d] [%(levelname)s] %(message)s"))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger


def test_line_handler_keeps_lines_whole_across_threads_on_a_pipe():
    read_end, write_end = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(os.fdopen(read_end, "rb").read()))
    reader.start()
    with os.fdopen(write_end, "w", encoding="utf-8") as stream:
        logger = _logger(LineHandler(stream), "test-overhead-pipe")
        # Past the pipe's 64 KiB: a pipe takes it in pieces, so a line written meanwhile
        # would land inside it.
        long_message = "x" * 200_000

        def log_lines(thread: int) -> None:
            for line in range(200):
                logger.info("thread=%d line=%d text=%s", thread, line, "é" * 30)
                if line % 50 == 0:
                    logger.info("thread=%d long=%s", thread, long_message)

        threads = [threading.Thread(target=log_lines, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    reader.join(60)
    lines = received[0].decode().splitlines()
    short = re.compile(rf"\[{os.getpid()}\] \[INFO\] thread=\d line=\d+ text=(é){{30}}")
    assert sum(1 for line in lines if short.fullmatch(line)) == 8 * 200
    assert sum(1 for line in lines if line.endswith(f"long={long_message}")) == 8 * 4
    assert len(lines) == 8 * 204


def test_line_handler_escapes_controls_and_writes_streams_without_a_descriptor():
    stream = io.StringIO()
    logger = _logger(LineHandler(stream), "test-overhead-stringio")
    logger.info("model=%s", "evil\nname")
    assert stream.getvalue() == f"[{os.getpid()}] [INFO] model=evil\\u000aname\n"
