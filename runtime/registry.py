"""The models one worker process holds, kept in step with the server's loaded set."""

from __future__ import annotations

import logging
import threading
import time

from runtime.batching import BatchingConfig
from runtime.config import RuntimeConfig
from runtime.fetch import FetchLimits, ImageFetcher
from runtime.images import DEFAULT_MAX_PIXELS
from runtime.loaded_set import LoadedSet
from runtime.models import Model
from runtime.repository import Repository
from runtime.stats import MODEL_LOADED

log = logging.getLogger(__name__)


class ModelNotLoaded(LookupError):
    """The model is in the repository but not in the server's loaded set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class ModelRegistry:
    """Without a loaded set (in-process use) every repository model is servable on first use;
    with one, only the models in the set are, and models that leave it are dropped."""

    def __init__(
        self,
        repository: Repository,
        runtime: RuntimeConfig | None = None,
        fetch_limits: FetchLimits | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        loaded_set: LoadedSet | None = None,
        batching: BatchingConfig | None = None,
    ) -> None:
        self.repository = repository
        self.runtime = runtime or RuntimeConfig()
        self.fetcher = ImageFetcher(fetch_limits or FetchLimits())
        self.max_pixels = max_pixels
        self.loaded_set = loaded_set
        self.batching = batching
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._allowed: set[str] | None = None

    def get(self, name: str) -> Model:
        """The model called `name`, loading it from the repository the first time.

        Raises `ModelNotFound` when the repository has no such model, `ModelNotLoaded` when it
        is not in the server's loaded set, `ModelLoadError` when its files cannot be loaded.
        """
        self.sync()
        if self._allowed is not None and name not in self._allowed:
            self.repository.find(name)  # ModelNotFound if it is not even built
            raise ModelNotLoaded(name)
        return self.load(name)

    def load(self, name: str) -> Model:
        """Load `name` in this worker now (whether or not it is in the loaded set)."""
        model = self._models.get(name)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(name)
            if model is None:
                entry = self.repository.find(name)
                started = time.perf_counter()
                model = Model.load(
                    entry, self.runtime, self.fetcher, self.max_pixels, self.batching
                )
                log.info("loaded %s in %.2f s", name, time.perf_counter() - started)
                self._models[name] = model
                MODEL_LOADED.labels(name).inc()
        return model

    def sync(self) -> None:
        """Follow the loaded set: drop every held model that has left it (freeing its memory)."""
        if self.loaded_set is None:
            return
        stamp = self.loaded_set.stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            allowed = set(self.loaded_set.read())
            for name in [name for name in self._models if name not in allowed]:
                self._models.pop(name).close()
                MODEL_LOADED.labels(name).dec()
                log.info("unloaded %s", name)
            self._allowed, self._stamp = allowed, stamp

    def follow(self, interval_s: float = 0.5) -> None:
        """Keep syncing in the background, so unloaded models free memory in idle workers."""

        def loop() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    self.sync()
                except Exception:
                    log.exception("cannot read the loaded-model set")

        threading.Thread(target=loop, name="loaded-set", daemon=True).start()
