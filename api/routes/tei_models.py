"""Which model serves a Text Embeddings Inference request, which names none.

A TEI server holds one model; this one holds several. A TEI request goes to the
`--default-model` of the kind its route needs (the first one given serves the routes that fit
any kind: POST /, /info, /tokenize, /decode), else to the only loaded model of that kind; with
none, or several, the answer is a 400 that names the flag.
"""

from __future__ import annotations

import threading

from api.routes.tei_errors import TEIError
from api.routes.tei_kinds import kind_of
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
        """The model that serves `route`, which needs a model of one of `kinds` (in its order
        of preference): a --default-model of the first kind that has one, else the only loaded
        model of the first kind that has any."""
        for kind in kinds:
            for name in self.defaults:
                if self._kind(name) == kind:
                    return name
        loaded = self._loaded()
        wanted = " or ".join(kind.replace("-", " ") for kind in kinds)
        for kind in kinds:
            candidates = [name for name in loaded if self._kind(name) == kind]
            if candidates:
                return _only(candidates, route, wanted)
        return _only([], route, wanted)

    def primary(self, route: str) -> tuple[str, str]:
        """The model that serves routes fitting any model (POST /, /info, /tokenize, /decode):
        the first --default-model, else the only loaded model of a kind TEI knows; and its kind."""
        if self.defaults:
            name = self.defaults[0]
        else:
            name = _only([n for n in self._loaded() if self._kind(n)], route, "text")
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


def _only(candidates: list[str], route: str, wanted: str) -> str:
    """The one candidate; none or several is a 400 that says how to choose."""
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise TEIError(
            "Validation",
            f"{route} needs a {wanted} model and several are loaded ({', '.join(candidates)}): "
            f"choose one with {FLAG} NAME when starting the server",
            status=400,
        )
    raise TEIError(
        "Validation",
        f"{route} needs a {wanted} model and none is loaded: load one (POST /load_model) or "
        f"start the server with {FLAG} NAME",
        status=400,
    )
