"""A local copy of an object-store engine repository, laid out as a normal one.

The server serves the cache directory with the local machinery unchanged. A sync downloads a
model's current version into a hidden staging directory beside its entry, checks every file
against its SHA-256, and swaps it in whole (runtime.repository.staging, as ingrain-build
does); every worker's registry then reloads the rebuilt entry (ModelRegistry.refresh). A
version that fails to download or check is dropped and the cached one keeps serving. Each
entry records the version it holds, so an unchanged model costs one small GET per sync.

One model's broken pointer, manifest or files never stop the others: it is skipped, its cached
version (if any) keeps serving, and the reason is written to the repository's UNREADABLE_FILE
for /ready and `ingrain list`. A version must also load (a `check`, run before the swap) to
replace the cached one. Each store gets a cache directory of its own (`cache_root`), so
servers of different stores sharing --cache-dir never serve each other's models.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ModelNotFound
from runtime.repository import UNREADABLE_FILE, Repository, slugify
from runtime.repository.load_check import LoadCheckFailed
from runtime.repository.manifest import write_atomically
from runtime.repository.s3 import BrokenVersion, ObjectStore, Published, S3Location, StoreError
from runtime.repository.staging import entry_lock, staging_directory

log = logging.getLogger(__name__)

VERSION_FILE = ".published.json"  # inside an entry: hidden, so not part of the model
# Broken versions remembered per model (each a few hundred bytes of reason).
MAX_BROKEN_VERSIONS = 16


@dataclass(frozen=True)
class RemoteSettings:
    """Where the server's models come from, and how often it looks for new versions."""

    location: S3Location
    poll_interval_s: float = 0.0  # 0: at start and on /load_model only


def cache_root(location: S3Location, cache_dir: Path | None = None) -> Path:
    """Where a server keeps its copy of `location`'s models: a directory of its own per
    bucket and prefix under `cache_dir` (default ~/.cache/ingrain/engines). The endpoint is
    not part of the key, so a cache still serves when the endpoint changes or is down."""
    key = f"{slugify(f'{location.bucket}/{location.prefix}')}-"
    key += hashlib.sha256(str(location).encode()).hexdigest()[:10]
    return (cache_dir or Path.home() / ".cache" / "ingrain" / "engines") / key


class S3Cache:
    def __init__(
        self, store: ObjectStore, root: Path, check: Callable[[Path], None] | None = None
    ) -> None:
        self.store = store
        self.root = Path(root)
        # Called on a downloaded version before it replaces the cached one; raises
        # LoadCheckFailed when the version cannot serve (runtime.repository.load_check).
        self.check = check
        # slug -> {version found broken: why}, the latest few: polls skip them (versions are
        # never rewritten, so they cannot heal), /load_model retries. Several, so that a
        # pointer moving back and forth between broken versions is not fetched at every poll.
        self._broken: dict[str, dict[str, str]] = {}
        self._reported: dict[str, str] = {}

    def sync_all(self) -> list[str]:
        """Bring every published model up to date; those that cannot be are logged and
        reported (their cached version, if any, stays). Drop the cached models that the store
        no longer publishes, and return their names. Raises StoreError when the store cannot
        be listed."""
        everything, bad_pointers = self.store.scan()
        unreadable = dict(bad_pointers)
        for published in everything:
            broken = self._broken.get(published.slug, {}).get(published.version)
            if broken is not None:
                unreadable[published.name] = broken
                continue
            try:
                self._sync(published)
            except StoreError as error:
                unreadable[published.name] = str(error)
            except Exception as error:  # one model's surprise must not stop the others'
                log.exception("cannot fetch %s", published.name)
                unreadable[published.name] = f"cannot fetch: {error!r}"
        self._report(unreadable)
        # A model whose pointer cannot be read is still published: its cached copy stays.
        return self._drop_unpublished({item.slug for item in everything} | set(bad_pointers))

    def _report(self, unreadable: dict[str, str]) -> None:
        """Log what is newly unreadable (once, not at every poll) and write it down for the
        repository's readers."""
        for name, why in unreadable.items():
            if self._reported.get(name) != why:
                log.error("skipping %s: %s", name, why)
        self._reported = unreadable
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.root / UNREADABLE_FILE, json.dumps(unreadable, indent=1))

    def sync(self, name: str) -> None:
        """Bring `name` up to date, if the store publishes it (and update its report)."""
        published = self.store.find(name)
        if published is None:
            return
        try:
            self._sync(published)
        except StoreError as error:
            self._note(name, str(error))
            raise
        self._note(name, None)

    def _note(self, name: str, why: str | None) -> None:
        """Change one model's line of the report between polls."""
        try:
            unreadable = json.loads((self.root / UNREADABLE_FILE).read_text())
        except (OSError, ValueError):
            unreadable = {}
        if not isinstance(unreadable, dict) or unreadable.get(name) == why:
            return
        if why is None:
            unreadable.pop(name, None)
        else:
            unreadable[name] = why
        write_atomically(self.root / UNREADABLE_FILE, json.dumps(unreadable, indent=1))

    def poll(self) -> list[str]:
        """One round of sync_all (the names of the models it dropped), unless another worker of
        this server is running one."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".poll.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []
            return self.sync_all()

    def _drop_unpublished(self, slugs: set[str]) -> list[str]:
        """Mirror `ingrain remove`: a model fetched from this store whose pointer is gone is
        removed from the cache too, so that workers stop serving it (ModelRegistry.refresh).
        Models put in the cache directory by other means, or fetched from another store
        sharing the directory, are left alone."""
        dropped = []
        for version_file in self.root.glob(f"[!.]*/{VERSION_FILE}"):
            slug = version_file.parent.name
            if slug in slugs:
                continue
            with entry_lock(self.root, slug):
                record = self._record(slug)
                if record is None or record.get("source") != str(self.store.location):
                    continue
                with suppress(BrokenVersion):  # unreadable: not a removal
                    if self.store.pointer(slug) is None:
                        self._remove(record["name"], dropped)
        return dropped

    def _remove(self, name: str, dropped: list[str]) -> None:
        with suppress(ModelNotFound, OSError):
            Repository(self.root).remove(name)
            dropped.append(name)
            log.info("removed %s: %s no longer publishes it", name, self.store.location)

    def _sync(self, published: Published) -> None:
        try:
            self._fetch(published)
        except BrokenVersion as error:
            broken = self._broken.setdefault(published.slug, {})
            broken[published.version] = str(error)
            while len(broken) > MAX_BROKEN_VERSIONS:
                del broken[next(iter(broken))]  # the longest known
            raise

    def _fetch(self, published: Published) -> None:
        if self._cached(published.slug) == published.version:
            return
        with entry_lock(self.root, published.slug):
            if self._cached(published.slug) == published.version:  # another worker fetched it
                return
            with self._staged(published) as staging:
                self.store.download(published, staging)
                self._check(published, staging)
                record = json.loads(published.as_json()) | {"source": str(self.store.location)}
                (staging / VERSION_FILE).write_text(json.dumps(record))
        log.info("fetched %s version %s", published.name, published.version)

    def _check(self, published: Published, staging: Path) -> None:
        if self.check is None:
            return
        try:
            self.check(staging)
        except LoadCheckFailed as error:
            raise BrokenVersion(
                f"version {published.version} of {published.name} does not load ({error}); "
                "the cached version, if any, keeps serving: publish a fixed one"
            ) from None

    @contextmanager
    def _staged(self, published: Published) -> Iterator[Path]:
        try:
            with staging_directory(self.root / published.slug) as staging:
                yield staging
        except OSError as error:
            raise StoreError(f"cannot write {published.name} into {self.root}: {error}") from None

    def _cached(self, slug: str) -> str | None:
        record = self._record(slug)
        return record.get("version") if record is not None else None

    def _record(self, slug: str) -> dict | None:
        """What the cached entry records of its store and version (VERSION_FILE), if any."""
        try:
            record = json.loads((self.root / slug / VERSION_FILE).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("name"), str) else None
