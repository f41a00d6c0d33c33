"""Errors the runtime raises for the API to map to responses."""

from __future__ import annotations


class InputError(ValueError):
    """The request asks something of the model that it cannot do; the message says what."""


class ModelLoadError(RuntimeError):
    """An engine directory that cannot be loaded; the message names the file and the cause."""
