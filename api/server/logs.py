"""Log lines that a client cannot forge: every control character in a message (a newline in a
model name, say) is escaped, so one record is always one line. Tracebacks keep their lines."""

from __future__ import annotations

import io
import logging
import os
import re

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
    """A StreamHandler that writes each record as one write(2) of its whole line, under the
    handler's lock (which `Handler.handle` takes). Without the lock a short line, written
    atomically, could still land inside a longer one (a traceback past PIPE_BUF) that a pipe
    takes in several pieces. Streams without a file descriptor (a test's captured stderr) are
    written through the stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            fd = self._descriptor()
            if fd is None:
                self.stream.write(line)
                self.flush()
                return
            self.stream.flush()  # what was written through the stream comes first
            view = memoryview(
                line.encode(self.stream.encoding or "utf-8", self.stream.errors or "strict")
            )
            while view:
                view = view[os.write(fd, view) :]
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _descriptor(self) -> int | None:
        try:
            return self.stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None


def configure_logging() -> None:
    handler = LineHandler()
    handler.setFormatter(
        EscapingFormatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
