"""Log lines that a client cannot forge: every control character in a message (a newline in a
model name, say) is escaped, so one record is always one line. Tracebacks keep their lines."""

from __future__ import annotations

import logging
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


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        EscapingFormatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
