"""The text cleaning open_clip applies before tokenizing, reproduced for the server.

`lower` (classic CLIP), `whitespace` (HF text towers) and `canonicalize` (SigLIP) are open_clip's
three clean functions; the manifest names the one its model uses.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable

import ftfy

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _basic(text: str) -> str:
    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _whitespace(text: str) -> str:
    return " ".join(_basic(text).split())


def _lower(text: str) -> str:
    return _whitespace(text).lower()


def _canonicalize(text: str) -> str:
    text = _basic(text).replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


CLEANERS: dict[str, Callable[[str], str]] = {
    "lower": _lower,
    "whitespace": _whitespace,
    "canonicalize": _canonicalize,
}
