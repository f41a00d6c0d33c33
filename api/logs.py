"""Log lines that a client cannot forge: every control character in a message (a newline in a
model name, say) is escaped, so one record is always one line. Tracebacks keep their lines."""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


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
