"""The models one worker process holds, kept in step with the server's loaded set.

Requests hold a model through `use()`: a model that leaves the set (or whose engine directory
is rebuilt) is retired at once, so new requests no longer see it, and closed when the last
request that holds it has finished, so no request ever runs on a closed engine.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.batching.stats import MODEL_LOADED
from runtime.config import RuntimeConfig
from runtime.errors import ModelLoadError, ModelNotFound, ModelNotLoaded, ModelUnavailable
from runtime.models import Model
from runtime.preprocessing.fetch import ImageFetcher
from runtime.repository import Repository
from runtime.repository.loaded_set import LoadedSet
from runtime.repository.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)


class ModelRegistry:
    """Without a loaded set (in-process use) every repository model is servable on first use;
    with one, only the models in the set are, and models that leave it are dropped."""

    def __init__(
        self,
        repository: Repository,
        runtime: RuntimeConfig | None = None,
        loaded_set: LoadedSet | None = None,
    ) -> None:
        self.repository = repository
        self.runtime = runtime or RuntimeConfig()
        # One download pool for every model this worker holds.
        self.fetcher = ImageFetcher(self.runtime.fetch)
        self.loaded_set = loaded_set
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._allowed: set[str] | None = None
        self._refreshing = threading.Lock()
        # name -> the identity of a new version that failed to load (not tried again).
        self._unloadable: dict[str, tuple[int, int] | None] = {}

    @contextmanager
    def use(self, name: str) -> Iterator[Model]:
        """The model called `name`, held for the duration of the block (loaded on first use).

        Raises `ModelNotFound` when the repository has no such model, `ModelNotLoaded` when it
        is not in the server's loaded set, `ModelLoadError` when its files cannot be loaded,
        `ModelUnavailable` when it changes under the request.
        """
        self.sync()
        with self._lock:
            if self._allowed is not None and name not in self._allowed:
                self.repository.find(name)  # ModelNotFound if it is not even built
                raise ModelNotLoaded(name)
            model = self._load_locked(name)
            model.acquire()
        try:
            yield model
        finally:
            model.release()

    def held(self, name: str) -> Model | None:
        """The model if this worker holds it now (loaded and warmed up), without loading it."""
        return self._models.get(name)

    def load(self, name: str) -> Model:
        """Load `name` in this worker now (whether or not it is in the loaded set)."""
        with self._lock:
            return self._load_locked(name)

    def drop(self, name: str) -> None:
        """Retire `name` in this worker (it closes once no request holds it)."""
        with self._lock:
            self._retire(name, "unloaded")

    def _load_locked(self, name: str) -> Model:
        model = self._models.get(name)
        if model is not None:
            return model
        model = self._open(name)
        self._models[name] = model
        MODEL_LOADED.labels(name).inc()
        return model

    def _open(self, name: str) -> Model:
        """Load and warm up the repository's `name` (whether or not this worker holds it)."""
        entry = self.repository.find(name)
        started = time.perf_counter()
        identity = _identity(entry.directory)
        try:
            model = Model.load(entry, self.runtime, self.fetcher)
        except ModelLoadError:
            if identity is None or _identity(entry.directory) != identity:
                raise ModelUnavailable(
                    f"model {name!r} was deleted or replaced while it was loading"
                ) from None
            raise
        model.identity = identity
        log.info("loaded %s in %.2f s", name, time.perf_counter() - started)
        return model

    def _retire(self, name: str, why: str) -> None:
        model = self._models.pop(name, None)
        if model is not None:
            model.retire()
            MODEL_LOADED.labels(name).dec()
            log.info("%s %s", why, name)

    def sync(self) -> None:
        """Follow the loaded set: retire every held model that has left it (freeing its memory
        once no request holds it)."""
        if self.loaded_set is None:
            return
        stamp = self.loaded_set.stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            allowed = set(self.loaded_set.read())
            for name in [name for name in self._models if name not in allowed]:
                self._retire(name, "unloaded")
            self._allowed, self._stamp = allowed, stamp

    def refresh(self, only: str | None = None) -> None:
        """Follow rebuilds and removals of the held models' engine directories (or of `only`).

        A rebuilt model is loaded and warmed up beside the version serving, which keeps serving
        until the swap (so a republish costs requests nothing, at the price of both versions'
        memory for the while). A removed model is retired, so requests for it get 404. A new
        version that cannot load is logged and not tried again, and the serving version stays
        (as a broken download leaves the cached version serving).
        """
        with self._refreshing:  # one at a time: the follow thread and /load_model's fetches
            for name, model in list(self._models.items()):
                if only is not None and name != only:
                    continue
                identity = _identity(model.directory)
                tried = name in self._unloadable and self._unloadable[name] == identity
                if identity == model.identity or tried:
                    continue
                try:
                    fresh: Model | None = self._open(name)
                except ModelUnavailable:  # replaced again while loading: the next round
                    continue
                except ModelNotFound:
                    fresh = None
                except ModelLoadError as error:
                    log.error("%s: keeps serving; its new version cannot load: %s", name, error)
                    self._unloadable[name] = identity
                    continue
                with self._lock:
                    if self._models.get(name) is not model:  # unloaded meanwhile
                        if fresh is not None:
                            fresh.retire()
                    elif fresh is None:
                        self._retire(name, "retired the removed")
                    else:
                        self._models[name] = fresh
                        model.retire()
                        self._unloadable.pop(name, None)
                        log.info("swapped in the new version of %s", name)

    def follow(self, interval_s: float = 0.5) -> None:
        """Keep syncing in the background, so unloaded models free memory in idle workers and
        rebuilt models are picked up."""

        def loop() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    self.sync()
                    self.refresh()
                except Exception:
                    log.exception("cannot follow the loaded-model set")

        threading.Thread(target=loop, name="loaded-set", daemon=True).start()


def _identity(directory: Path) -> tuple[int, int] | None:
    """Which engine directory is at this path now: a rebuild swaps in a new one."""
    try:
        status = os.stat(directory / MANIFEST_FILE)
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns
