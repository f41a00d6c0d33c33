"""Serving from object storage: each worker syncs its server's cache on /load_model and, when
a poll interval is set, in the background (one worker of the server at a time)."""

from __future__ import annotations

import logging
import threading
import time

import falcon

from runtime.registry import ModelRegistry
from runtime.repository.s3 import ObjectStore, StoreError
from runtime.repository.s3_cache import RemoteSettings, S3Cache

log = logging.getLogger(__name__)


class RemoteEngines:
    def __init__(self, settings: RemoteSettings, registry: ModelRegistry) -> None:
        self.cache = S3Cache(ObjectStore(settings.location), registry.repository.root)
        self.registry = registry
        if settings.poll_interval_s > 0:
            self._start_polling(settings.poll_interval_s)

    def sync(self, name: str) -> None:
        """Fetch `name`'s current version for /load_model, or a 502 naming what failed (the
        cached version, if any, keeps serving)."""
        try:
            self.cache.sync(name)
        except StoreError as error:
            log.error("cannot fetch %s: %s", name, error)
            raise falcon.HTTPBadGateway(
                description=f"cannot fetch model {name!r} from the object store: {error}. "
                "Its previously fetched version, if any, keeps serving."
            ) from None
        self.registry.refresh(name)  # this worker serves the new version from now on

    def _forget(self, removed: list[str]) -> None:
        """Models removed from the bucket leave the loaded set too (they no longer count
        against --max-loaded-models, and a republish under the name is not loaded unasked)."""
        loaded = self.registry.loaded_set
        if removed and loaded is not None:
            loaded.update(lambda models: {k: v for k, v in models.items() if k not in removed})

    def _start_polling(self, interval_s: float) -> None:
        location = self.cache.store.location

        def loop() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    self._forget(self.cache.poll())
                except StoreError as error:  # the store is unreachable or refuses us: retried
                    log.error("cannot poll %s for new versions: %s", location, error)
                except Exception:
                    log.exception("cannot poll %s for new versions", location)

        threading.Thread(target=loop, name="engine-poll", daemon=True).start()
