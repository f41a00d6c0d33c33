"""Turn the API's image strings (http/https URLs, data URIs, bare base64) into bytes, safely.

Downloads connect only to addresses checked first (no link-local or cloud-metadata targets, no
loopback or private ranges unless allowed, the same for IPv4 addresses embedded in IPv6 ones),
pin the connection to the checked address so a DNS answer cannot change between check and
connect, follow a bounded number of redirects (each one checked the same way) and stop at a
byte limit. One deadline covers all of a request's downloads, however slowly bytes come: a
timer cuts the connection when it passes. Every failed download gives the client the same
message (the reason goes to the log), so the server cannot be used to probe a network.
Inline images (base64, data URIs) are decoded in the calling thread, never behind downloads.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

log = logging.getLogger(__name__)

ALWAYS_BLOCKED = [
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # link-local, including 169.254.169.254 (AWS, GCP, Azure metadata)
        "fe80::/10",
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "0.0.0.0/8",
        "::/128",
        "224.0.0.0/4",  # multicast
        "ff00::/8",
    )
]
PRIVATE = [
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "::1/128",
        "fc00::/7",
        "100.64.0.0/10",
    )
]
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
DATA_URI = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(;[^,;]*)*?)(?P<b64>;base64)?,", re.I)


DOWNLOAD_FAILED = (
    "the image URL could not be fetched as an image (the server log has the reason); check "
    "that it is public and serves an image"
)


class ImageFetchError(ValueError):
    """An image string that cannot be turned into bytes; the message says why."""


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 1024 * 1024
    # Seconds all of one request's downloads may take together, redirects included.
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_private: bool = False
    parallel: int = 8


def is_url(source: str) -> bool:
    match = SCHEME.match(source.strip())
    return match is not None and match.group(1).lower() in ("http", "https")


class ImageFetcher:
    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self._pool = ThreadPoolExecutor(limits.parallel, thread_name_prefix="image-fetch")

    def fetch_all(self, sources: list[str], headers: dict[str, str]) -> list[bytes | Exception]:
        """Each source's bytes, or the error it raised, in order. URLs are downloaded in
        parallel, all by one deadline; inline images are decoded here meanwhile."""
        deadline = time.monotonic() + self.limits.timeout_s
        futures = {
            index: self._pool.submit(self._download, source.strip(), headers, deadline)
            for index, source in enumerate(sources)
            if is_url(source)
        }
        results: list[bytes | Exception] = []
        for index, source in enumerate(sources):
            try:
                future = futures.get(index)
                results.append(self.fetch(source) if future is None else future.result())
            except ImageFetchError as error:
                results.append(error)
        return results

    def fetch(self, source: str) -> bytes:
        """An inline image's bytes (base64 or a data URI); URLs go through fetch_all."""
        stripped = source.strip()
        # Base64 has no colon, so anything that starts like a URL scheme is one.
        scheme = SCHEME.match(stripped)
        if scheme is None:
            return self._base64(stripped)
        name = scheme.group(1).lower()
        if name == "data":
            return self._data_uri(stripped)
        raise ImageFetchError(
            f"the URL scheme {name!r} is not allowed; use http, https, a data URI or base64"
        )

    def _base64(self, text: str) -> bytes:
        compact = re.sub(r"\s+", "", text)
        if len(compact) * 3 // 4 > self.limits.max_bytes:
            raise ImageFetchError(f"the image is larger than {self.limits.max_bytes} bytes")
        try:
            return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ImageFetchError(
                "not an http(s) URL, a data URI or valid base64; send one of those"
            ) from None

    def _data_uri(self, uri: str) -> bytes:
        match = DATA_URI.match(uri)
        if match is None:
            raise ImageFetchError("malformed data URI; use data:image/png;base64,<data>")
        payload = uri[match.end() :]
        if match.group("b64"):
            return self._base64(payload)
        data = unquote_to_bytes(payload)
        if len(data) > self.limits.max_bytes:
            raise ImageFetchError(f"the image is larger than {self.limits.max_bytes} bytes")
        return data

    def _download(self, url: str, headers: dict[str, str], deadline: float) -> bytes:
        """The body at `url`, or ImageFetchError(DOWNLOAD_FAILED) with the reason logged."""
        try:
            if time.monotonic() >= deadline:  # waited for a download thread all that time
                raise self._late()
            return self._follow(url, headers, deadline)
        except ImageFetchError as error:
            log.warning("image download %.200r failed: %s", url, error)
            raise ImageFetchError(DOWNLOAD_FAILED) from None

    def _follow(self, url: str, headers: dict[str, str], deadline: float) -> bytes:
        for _ in range(self.limits.max_redirects + 1):
            connection, cutoff, response = self._request(url, headers, deadline)
            try:
                location = response.headers.get("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    try:
                        url = urljoin(url, location)
                    except ValueError:
                        raise ImageFetchError("a redirect's Location is malformed") from None
                    continue
                if response.status != 200:
                    raise ImageFetchError(f"the image URL answered HTTP {response.status}")
                return self._body(response, deadline)
            finally:
                cutoff.cancel()
                connection.close()
        raise ImageFetchError(f"more than {self.limits.max_redirects} redirects")

    def _request(self, url: str, headers: dict[str, str], deadline: float):
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            raise ImageFetchError("the image URL is malformed (host or port)") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise ImageFetchError("a redirect led to a scheme other than http or https")
        if not host:
            raise ImageFetchError("the image URL has no host")
        https = parts.scheme.lower() == "https"
        port = port or (443 if https else 80)
        address = self._checked_address(host, port)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._late()
        if https:
            connection = HTTPSConnection(
                address, port, timeout=remaining, server_hostname=host, assert_hostname=host
            )
        else:
            connection = HTTPConnection(address, port, timeout=remaining)
        # However slowly the server sends (headers or body), the connection ends at the deadline.
        cutoff = threading.Timer(remaining, _cut, (connection,))
        cutoff.daemon = True
        cutoff.start()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request_headers = {"Host": parts.netloc.rsplit("@", 1)[-1], **headers}
        try:
            connection.request("GET", path, headers=request_headers, preload_content=False)
            return connection, cutoff, connection.getresponse()
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            connection.close()
            cutoff.cancel()
            if time.monotonic() >= deadline:
                raise self._late() from None
            raise ImageFetchError(f"the image URL is unreachable: {_reason(error)}") from None

    def _late(self) -> ImageFetchError:
        return ImageFetchError(f"timed out: the downloads took over {self.limits.timeout_s} s")

    def _checked_address(self, host: str, port: int) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, ValueError):
            raise ImageFetchError(f"the image host {host!r} does not resolve") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        blocked = ALWAYS_BLOCKED + ([] if self.limits.allow_private else PRIVATE)
        for address in addresses:
            for form in (address, *_embedded_ipv4(address)):
                if any(form in network for network in blocked):
                    raise ImageFetchError(
                        f"the image host {host!r} is an address that is not allowed"
                    )
        return str(addresses[0])

    def _body(self, response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise ImageFetchError(f"the image is larger than {self.limits.max_bytes} bytes")
        chunks, size = [], 0
        try:
            for chunk in response.stream(64 * 1024):
                size += len(chunk)
                if size > self.limits.max_bytes:
                    raise ImageFetchError(f"the image is larger than {self.limits.max_bytes} bytes")
                chunks.append(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            if time.monotonic() >= deadline:
                raise self._late() from None
            raise ImageFetchError(f"the image download failed: {_reason(error)}") from None
        return b"".join(chunks)


def _cut(connection: HTTPConnection) -> None:
    """Unblock whatever read the downloading thread is in: it then fails at once."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, NAT64), to check them too."""
    if address.version == 4:
        return []
    forms = [address.ipv4_mapped, address.sixtofour]
    if address in NAT64:
        forms.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [form for form in forms if form is not None]


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or error
    text = str(reason)
    if "timed out" in text.lower():
        return "timed out"
    return text.split(": ", 1)[-1][:200]
