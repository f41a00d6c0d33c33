"""Log lines that a client cannot forge: every control character in a message (a newline in a
model name, say) is escaped, so one record is always one line. Tracebacks keep their lines."""

from __future__ import annotations

import io
import logging
import os
import re
import select

# C0 and C1 controls, line and paragraph separators, and the bidirectional overrides (which
# reorder a line on screen).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """Each control character as a \\uXXXX escape, which is also valid inside a JSON string (so
    JSON log lines stay JSON)."""
    return _CONTROL.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class LineHandler(logging.StreamHandler):
    """A StreamHandler that writes each record as one write(2) of its whole line, without the
    handler's lock. Every request logs a line, and with the lock the threads of a busy worker
    queue behind whichever one is in the write (taking the GIL and a futex round trip each);
    a single write of a line of at most PIPE_BUF bytes is never interleaved with another
    (POSIX, pipes; regular files and terminals alike on Linux), so the lock adds nothing for
    them. Longer lines (tracebacks) and streams without a file descriptor (a test's captured
    stderr) take the lock as before."""

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:
        if not (passed := self.filter(record)):
            return passed
        if isinstance(passed, logging.LogRecord):
            record = passed
        self.emit(record)
        return passed

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            fd = self._descriptor()
            data = line.encode(self.stream.encoding or "utf-8", self.stream.errors or "strict")
            if fd is None or len(data) > select.PIPE_BUF:
                with self.lock:
                    if fd is None:
                        self.stream.write(line)
                        self.flush()
                    else:
                        self._write_all(fd, data)
            else:
                self._write_all(fd, data)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _descriptor(self) -> int | None:
        try:
            return self.stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None

    def _write_all(self, fd: int, data: bytes) -> None:
        self.stream.flush()  # what was written through the stream comes first
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


def configure_logging() -> None:
    handler = LineHandler()
    handler.setFormatter(
        EscapingFormatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
