"""Which model serves a Text Embeddings Inference request, which names none.

A TEI server holds one model; this one holds several. A TEI request goes to the
`--default-model` of the kind its route needs (the first one given serves the routes that fit
any kind: POST /, /info, /tokenize, /decode), else to the only loaded model of that kind; with
none, or several, the answer is a 400 that names the flag.
"""

from __future__ import annotations

import threading

from api.tei_errors import TEIError
from api.tei_kinds import KINDS, kind_of
from runtime.errors import ModelNotFound
from runtime.registry import ModelRegistry

FLAG = "--default-model"


class ServedModels:
    def __init__(self, registry: ModelRegistry, defaults: tuple[str, ...]) -> None:
        self.registry = registry
        self.defaults = defaults
        self._kinds: dict[str, str | None] = {}
        self._stamp: tuple | None = None
        self._lock = threading.Lock()

    def pick(self, kinds: tuple[str, ...], route: str) -> str:
        """The model that serves `route`, which needs a model of one of `kinds`."""
        for kind in kinds:  # in the route's order of preference
            for name in self.defaults:
                if self._kind(name) == kind:
                    return name
        candidates = [name for name in self._loaded() if self._kind(name) in kinds]
        if len(candidates) == 1:
            return candidates[0]
        wanted = " or ".join(kind.replace("-", " ") for kind in kinds)
        if not candidates:
            raise TEIError(
                "Validation",
                f"{route} needs a {wanted} model and none is loaded: load one (POST /load_model) "
                f"or start the server with {FLAG} NAME",
                status=400,
            )
        raise TEIError(
            "Validation",
            f"{route} needs a {wanted} model and several are loaded ({', '.join(candidates)}): "
            f"choose one with {FLAG} NAME when starting the server",
            status=400,
        )

    def primary(self, route: str) -> tuple[str, str]:
        """The model that serves routes fitting any model (POST /, /info, /tokenize, /decode):
        the first --default-model, else the only loaded model of a kind TEI knows; and its kind."""
        name = self.defaults[0] if self.defaults else self.pick(KINDS, route)
        kind = self._kind(name)
        assert kind is not None  # the CLI checked the defaults' kinds
        return name, kind

    def _loaded(self) -> list[str]:
        loaded = self.registry.loaded_set
        if loaded is None:
            return [entry.name for entry in self.registry.repository.entries()]
        stamp = loaded.stamp()
        with self._lock:
            if stamp != self._stamp:  # a model may have been rebuilt as another kind
                self._kinds.clear()
                self._stamp = stamp
        return list(loaded.read())

    def _kind(self, name: str) -> str | None:
        with self._lock:
            if name in self._kinds:
                return self._kinds[name]
        try:
            kind = kind_of(self.registry.repository.find(name).manifest)
        except ModelNotFound:
            kind = None
        with self._lock:
            self._kinds[name] = kind
        return kind
