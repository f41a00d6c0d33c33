"""Turn the API's image strings (http/https URLs, data URIs, bare base64) into bytes, safely.

Downloads connect only to addresses checked first (no link-local or cloud-metadata targets,
private ranges optionally), pin the connection to the checked address so a DNS answer cannot
change between check and connect, follow a bounded number of redirects (each one checked the
same way), stop at a byte limit and give up after a timeout.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import urllib3

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
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
DATA_URI = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(;[^,;]*)*?)(?P<b64>;base64)?,", re.I)


class ImageFetchError(ValueError):
    """An image string that cannot be turned into bytes; the message says why."""


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_private: bool = True
    parallel: int = 8


class ImageFetcher:
    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self._pool = ThreadPoolExecutor(limits.parallel, thread_name_prefix="image-fetch")

    def fetch_all(self, sources: list[str], headers: dict[str, str]) -> list[bytes | Exception]:
        """Each source's bytes, or the error it raised, in order; fetched in parallel."""
        futures = [self._pool.submit(self.fetch, source, headers) for source in sources]
        results: list[bytes | Exception] = []
        for future in futures:
            try:
                results.append(future.result())
            except ImageFetchError as error:
                results.append(error)
        return results

    def fetch(self, source: str, headers: dict[str, str]) -> bytes:
        stripped = source.strip()
        # Base64 has no colon, so anything that starts like a URL scheme is one.
        scheme = SCHEME.match(stripped)
        if scheme is None:
            return self._base64(stripped)
        name = scheme.group(1).lower()
        if name in ("http", "https"):
            return self._download(stripped, headers)
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

    def _download(self, url: str, headers: dict[str, str]) -> bytes:
        deadline = time.monotonic() + self.limits.timeout_s
        for _ in range(self.limits.max_redirects + 1):
            response = self._request(url, headers, deadline)
            if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                url = urljoin(url, response.headers["Location"])
                if urlsplit(url).scheme.lower() not in ("http", "https"):
                    raise ImageFetchError("a redirect led to a scheme other than http or https")
                continue
            if response.status != 200:
                raise ImageFetchError(f"the image URL answered HTTP {response.status}")
            return self._body(response, deadline)
        raise ImageFetchError(f"more than {self.limits.max_redirects} redirects")

    def _request(self, url: str, headers: dict[str, str], deadline: float):
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise ImageFetchError("the image URL has no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = self._checked_address(host, port)
        remaining = max(0.1, deadline - time.monotonic())
        timeout = urllib3.Timeout(connect=remaining, read=remaining)
        kwargs = {"timeout": timeout, "retries": False, "maxsize": 1}
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                address, port, server_hostname=host, assert_hostname=host, **kwargs
            )
        else:
            pool = urllib3.HTTPConnectionPool(address, port, **kwargs)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request_headers = {"Host": parts.netloc.rsplit("@", 1)[-1], **headers}
        try:
            return pool.urlopen(
                "GET", path, headers=request_headers, redirect=False, preload_content=False
            )
        except urllib3.exceptions.HTTPError as error:
            raise ImageFetchError(f"the image URL is unreachable: {_reason(error)}") from None

    def _checked_address(self, host: str, port: int) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise ImageFetchError(f"the image host {host!r} does not resolve") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in addresses:
            blocked = ALWAYS_BLOCKED + ([] if self.limits.allow_private else PRIVATE)
            mapped = getattr(address, "ipv4_mapped", None) or address
            if any(mapped in network for network in blocked):
                raise ImageFetchError(f"the image host {host!r} is an address that is not allowed")
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
                if time.monotonic() > deadline:
                    raise ImageFetchError(
                        f"the download took longer than {self.limits.timeout_s} s"
                    )
                chunks.append(chunk)
        except urllib3.exceptions.HTTPError as error:
            raise ImageFetchError(f"the image download failed: {_reason(error)}") from None
        finally:
            response.release_conn()
        return b"".join(chunks)


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or error
    text = str(reason)
    if "timed out" in text.lower():
        return "timed out"
    return text.split(": ", 1)[-1][:200]
