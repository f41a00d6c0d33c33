"""The models one worker process has loaded, created on first use."""

from __future__ import annotations

import logging
import threading
import time

from runtime.fetch import FetchLimits, ImageFetcher
from runtime.images import DEFAULT_MAX_PIXELS
from runtime.models import Model
from runtime.repository import Repository
from runtime.stats import MODEL_LOADED

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(
        self,
        repository: Repository,
        backend: str = "auto",
        threads: int = 0,
        fetch_limits: FetchLimits | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.repository = repository
        self.backend = backend
        self.threads = threads
        self.fetcher = ImageFetcher(fetch_limits or FetchLimits())
        self.max_pixels = max_pixels
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Model:
        """The loaded model called `name`, loading it from the repository the first time.

        Raises `ModelNotFound` when the repository has no such model, `ModelLoadError` when its
        files cannot be loaded. One lock serialises loads so two threads never load twice.
        """
        model = self._models.get(name)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(name)
            if model is None:
                entry = self.repository.find(name)
                started = time.perf_counter()
                model = Model.load(entry, self.backend, self.threads, self.fetcher, self.max_pixels)
                log.info("loaded %s in %.2f s", name, time.perf_counter() - started)
                self._models[name] = model
                MODEL_LOADED.labels(name).inc()
        return model
