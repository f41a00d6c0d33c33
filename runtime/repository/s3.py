"""Engine repositories in S3-compatible object storage: publish, list, remove and download.

Layout under `s3://bucket/prefix/`:

    <slug>/versions/<version>/model.json   the manifest, with every file's SHA-256
    <slug>/versions/<version>/<file>       every file the manifest names
    <slug>/current.json                    {"name", "version", "manifest_sha256"}

A publish uploads a fresh version and writes `current.json` last, in one PUT: a reader follows
the pointer to a complete version, and of two concurrent publishes the last pointer wins whole.
Everything read back is hostile until checked: the manifest against the pointer's digest, every
file against the manifest's, file names kept inside the target directory, sizes bounded.

Endpoint, region and credentials come from boto3's standard chain (AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance and pod roles).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from runtime.repository import slug_or_none, slugify
from runtime.repository.digests import (
    CHUNK_BYTES,
    check_files,
    check_layout,
    file_digests,
    safe_relative,
)
from runtime.repository.manifest import MANIFEST_FILE, Manifest, ManifestError

log = logging.getLogger(__name__)

SCHEME = "s3://"
POINTER = "current.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_POINTER_BYTES = 64 * 1024
REPAIR = "; publish the model again, or delete it with: ingrain remove NAME --engines s3://..."
# A publish deletes superseded versions (but the one it replaces) once they are this old.
SWEEP_AFTER_S = 3600.0


class StoreError(RuntimeError):
    """The object store cannot be reached or refuses us, or holds something broken; the
    message names the object and says what to check."""


class BrokenVersion(StoreError):
    """A published version with an object missing or differing from its digest: retrying
    cannot help (versions are never rewritten), publishing again does."""


def is_s3_url(value: str | os.PathLike) -> bool:
    return str(value).startswith(SCHEME)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        bucket, _, prefix = url[len(SCHEME) :].partition("/")
        if not is_s3_url(url) or not bucket:
            raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
        return cls(bucket, prefix.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(part for part in (self.prefix, *parts) if part)

    def url(self, key: str = "") -> str:
        return f"{SCHEME}{self.bucket}/{key or self.prefix}"

    def __str__(self) -> str:
        return self.url()


@dataclass(frozen=True)
class Deadlines:
    """Every call to the store is bounded: an unreachable endpoint fails in seconds."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 3


@dataclass(frozen=True)
class Published:
    """What a model's pointer says: its name, the current version and its manifest's digest."""

    name: str
    slug: str
    version: str
    manifest_sha256: str

    def as_json(self) -> str:
        body = {"name": self.name, "version": self.version}
        return json.dumps({**body, "manifest_sha256": self.manifest_sha256}) + "\n"


@dataclass(frozen=True)
class RemoteEntry:
    """A published model as `ingrain list` shows it (a local Entry's name, manifest, size)."""

    published: Published
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.published.name

    def size_bytes(self) -> int:
        return sum(int(item.get("bytes", 0)) for item in (self.manifest.files or {}).values())


class ObjectStore:
    def __init__(self, location: S3Location, deadlines: Deadlines | None = None) -> None:
        self.location = location
        self.deadlines = deadlines or Deadlines()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=self.deadlines.connect_timeout_s,
                read_timeout=self.deadlines.read_timeout_s,
                retries={"max_attempts": self.deadlines.max_attempts, "mode": "standard"},
            )
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    # Reading -----------------------------------------------------------------------------

    def pointer(self, slug: str) -> Published | None:
        """The slug's current version, or None when nothing is published under it. Raises
        BrokenVersion when the pointer is not one (`ingrain remove` or a publish replaces it)."""
        key = self.location.key(slug, POINTER)
        url = self.location.url(key)
        data = self._get(key, MAX_POINTER_BYTES, missing_ok=True)
        if data is None:
            return None
        try:
            fields = json.loads(data)
            published = Published(
                str(fields["name"]), slug, str(fields["version"]), str(fields["manifest_sha256"])
            )
        except (ValueError, KeyError, TypeError) as error:
            raise BrokenVersion(f"{url} is not a model pointer ({error!r}){REPAIR}") from None
        if "/" in published.version or published.version in ("", ".", ".."):
            raise BrokenVersion(f"{url} names a bad version {published.version!r}{REPAIR}")
        if slug_or_none(published.name) != slug:
            raise BrokenVersion(f"{url} names {published.name!r}, not its slug{REPAIR}")
        return published

    def scan(self) -> tuple[list[Published], dict[str, str]]:
        """Every model published under the prefix, sorted by name, and the slugs whose pointer
        cannot be read, with why: one broken object does not hide the others. Raises
        StoreError when the store itself cannot be listed or read."""
        found, unreadable = [], {}
        for slug in self._slugs():
            try:
                published = self.pointer(slug)
            except BrokenVersion as error:
                unreadable[slug] = str(error)
                continue
            if published is not None:
                found.append(published)
        return sorted(found, key=lambda published: published.name), unreadable

    def entries(self) -> tuple[list[RemoteEntry], dict[str, str]]:
        """The published models with their manifests (for `ingrain list`), and those whose
        pointer or manifest cannot be read, with why."""
        everything, unreadable = self.scan()
        entries = []
        for published in everything:
            try:
                entries.append(RemoteEntry(published, self.manifest(published)[1]))
            except BrokenVersion as error:
                unreadable[published.name] = str(error)
        return entries, unreadable

    def find(self, name: str) -> Published | None:
        """The model published as `name`, or None."""
        slug = slug_or_none(name)
        published = self.pointer(slug) if slug else None
        return published if published is not None and published.name == name else None

    def manifest(self, published: Published) -> tuple[bytes, Manifest]:
        """The version's manifest, checked against the pointer's digest."""
        key = self._version_key(published, MANIFEST_FILE)
        data = self._get(key, MAX_MANIFEST_BYTES)
        if hashlib.sha256(data).hexdigest() != published.manifest_sha256:
            raise BrokenVersion(
                f"{self.location.url(key)} does not match the SHA-256 in its pointer "
                f"{self.location.url(self.location.key(published.slug, POINTER))}: it is corrupt "
                "or was changed after publishing; publish the model again"
            )
        try:
            manifest = Manifest.from_dict(json.loads(data))
        except (ValueError, ManifestError) as error:
            raise BrokenVersion(f"{self.location.url(key)}: {error}") from None
        if manifest.name != published.name or manifest.files is None:
            raise BrokenVersion(
                f"{self.location.url(key)} is not the manifest of {published.name!r} with file "
                "digests; publish the model again with this version of ingrain-build"
            )
        _check_file_list(published.name, manifest)
        return data, manifest

    def download(self, published: Published, target: Path) -> Manifest:
        """Fetch a version into the empty directory `target`, every file checked against its
        SHA-256 and size; the manifest is written last."""
        data, manifest = self.manifest(published)
        wanted = [(item["bytes"], name, item["sha256"]) for name, item in manifest.files.items()]
        for size, name, digest in sorted(wanted):  # small files first: a broken one fails sooner
            path = target / safe_relative(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._download_checked(self._version_key(published, name), path, size, digest)
        (target / MANIFEST_FILE).write_bytes(data)
        return manifest

    def _download_checked(self, key: str, path: Path, size: int, digest: str) -> None:
        url = self.location.url(key)
        sha256 = hashlib.sha256()
        written = 0
        with self._calls(url), open(path, "wb") as output:
            body = self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(CHUNK_BYTES):
                written += len(chunk)
                if written > size:
                    break
                sha256.update(chunk)
                output.write(chunk)
            body.close()
        if written != size or sha256.hexdigest() != digest:
            raise BrokenVersion(
                f"{url} does not match the SHA-256 and size in its manifest: it is corrupt or "
                "was changed after publishing; publish the model again"
            )

    # Writing -----------------------------------------------------------------------------

    def publish(self, directory: Path, sweep_after_s: float = SWEEP_AFTER_S) -> Published:
        """Upload the engine directory as a new version of its model, then point at it; then
        delete the versions before the one it replaces that are older than `sweep_after_s`."""
        manifest = Manifest.read(directory)
        if manifest.files is None:  # built before manifests carried digests
            manifest = replace(manifest, files=file_digests(directory))
        else:
            check_files(directory, manifest.files)
        slug = slugify(manifest.name)
        version = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        data = manifest.to_json().encode()
        published = Published(manifest.name, slug, version, hashlib.sha256(data).hexdigest())
        for name in manifest.files or {}:
            key = self._version_key(published, name)
            with self._calls(self.location.url(key)):
                self.client.upload_file(str(directory / name), self.location.bucket, key)
        self._put(self._version_key(published, MANIFEST_FILE), data)
        try:
            previous = self.pointer(slug)
        except BrokenVersion:  # an unreadable pointer: this publish replaces it
            previous = None
        self._put(self.location.key(slug, POINTER), published.as_json().encode())  # last
        keep = {version} | ({previous.version} if previous else set())
        self._sweep(slug, keep, sweep_after_s)
        return published

    def remove(self, name: str) -> str | None:
        """Delete a model: its pointer first (readers stop seeing it), then every version.
        An unreadable pointer under the name's slug goes too. The slug removed, or None when
        nothing is published under the name."""
        try:
            published = self.find(name)
        except BrokenVersion:
            slug = slugify(name)
        else:
            if published is None:
                return None
            slug = published.slug
        pointer = self.location.key(slug, POINTER)
        with self._calls(self.location.url(pointer)):
            self.client.delete_object(Bucket=self.location.bucket, Key=pointer)
        self._delete([item["Key"] for item in self._versions(slug)])
        return slug

    def _sweep(self, slug: str, keep: set[str], older_than_s: float) -> None:
        """Delete superseded versions, all but `keep`, whose newest object is older than
        `older_than_s`: readers still fetching one have had that long, and the version of a
        publish still uploading is younger."""
        prefix = self.location.key(slug, "versions") + "/"
        keys: dict[str, list[str]] = {}
        newest: dict[str, datetime] = {}
        for item in self._versions(slug):
            version = item["Key"][len(prefix) :].split("/", 1)[0]
            keys.setdefault(version, []).append(item["Key"])
            newest[version] = max(newest.get(version, item["LastModified"]), item["LastModified"])
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than_s)
        stale = [v for v in keys if v not in keep and newest[v] <= cutoff]
        self._delete([key for version in stale for key in keys[version]])

    def _versions(self, slug: str) -> Iterator[dict]:
        """Every object under the slug's versions/ (Key, LastModified, ...)."""
        prefix = self.location.key(slug, "versions") + "/"
        with self._calls(self.location.url(prefix)):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
                yield from page.get("Contents", [])

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            with self._calls(self.location.url(batch[0]["Key"])):
                self.client.delete_objects(
                    Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}
                )

    # Plumbing ----------------------------------------------------------------------------

    def _version_key(self, published: Published, name: str) -> str:
        return self.location.key(published.slug, "versions", published.version, name)

    def _slugs(self) -> Iterator[str]:
        prefix = self.location.key() + "/" if self.location.prefix else ""
        with self._calls(self.location.url()):
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.location.bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    yield common["Prefix"][len(prefix) :].rstrip("/")

    def _get(self, key: str, limit: int, missing_ok: bool = False) -> bytes | None:
        url = self.location.url(key)
        with self._calls(url, missing_ok=missing_ok) as found:
            body = self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"]
            data = body.read(limit + 1)
            body.close()
        if not found:
            return None
        if len(data) > limit:
            raise BrokenVersion(f"{url} is larger than {limit} bytes: not an ingrain object")
        return data

    def _put(self, key: str, data: bytes) -> None:
        with self._calls(self.location.url(key)):
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=data)

    @contextmanager
    def _calls(self, url: str, missing_ok: bool = False) -> Iterator[list[bool]]:
        """Turn botocore's errors into StoreErrors that name the object and what to check.
        With `missing_ok`, a missing object leaves the yielded flag list empty instead."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            FlexibleChecksumError,
            NoCredentialsError,
        )

        found = [True]
        try:
            yield found
        except NoCredentialsError:
            raise StoreError(
                f"no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE"
            ) from None
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchKey" and missing_ok:
                found.clear()
                return
            if code == "NoSuchKey":
                raise BrokenVersion(f"{url}: the object is missing; publish again") from None
            raise StoreError(f"{url}: {_explain(code, status, error)}") from None
        except FlexibleChecksumError as error:
            raise BrokenVersion(
                f"{url} does not match the checksum the store holds for it ({error}): it is "
                "corrupt; publish the model again"
            ) from None
        except BotoCoreError as error:
            endpoint = self.client.meta.endpoint_url
            raise StoreError(
                f"cannot reach the object store at {endpoint} for {url}: {error}; check "
                "AWS_ENDPOINT_URL and the network"
            ) from None


def _check_file_list(name: str, manifest: Manifest) -> None:
    """Raise BrokenVersion unless every file entry has a name inside the engine directory, a
    size in bytes and a SHA-256, and the names can all be written and include what the model
    needs: a listing, a sync or a download then reads them as they are."""
    for file, item in (manifest.files or {}).items():
        size, digest = item.get("bytes"), item.get("sha256")
        try:
            safe_relative(file)
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ManifestError(f"no size in bytes ({size!r})")
            if not isinstance(digest, str):
                raise ManifestError(f"no SHA-256 ({digest!r})")
        except ManifestError as error:
            raise BrokenVersion(f"{name}: bad file entry {file!r}: {error}") from None
    try:
        check_layout(set(manifest.files or {}), manifest.named_files())
    except ManifestError as error:
        raise BrokenVersion(f"{name}: {error}; publish it again") from None


def _explain(code: str, status: int | None, error: Exception) -> str:
    if code == "NoSuchBucket":
        return "the bucket does not exist; create it or fix the URL"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or (
        status == 403
    ):
        return (
            f"the object store refused the credentials ({code or status}); check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket policy"
        )
    if status == 404:
        return f"not found ({error}): check the bucket name, and that AWS_ENDPOINT_URL is S3's"
    return f"the object store answered {code or status}: {error}"


def parse_engines(value: str | os.PathLike) -> Path | S3Location:
    """An --engines value: an s3:// URL or a local directory."""
    return S3Location.parse(str(value)) if is_s3_url(value) else Path(value)
