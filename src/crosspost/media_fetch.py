"""Fetching media a post names by URL, with the care any server-side fetch needs.

A URL from an API client must not make the server read its own network: every address the host
resolves to is checked (private, loopback, link-local, multicast, reserved and unspecified are
refused), the connection goes to the address that was checked (no second DNS look-up an attacker
could answer differently), and every redirect is checked the same way. The body is capped in size
and time, and its bytes, not its headers, say what it is.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urljoin, urlsplit

import certifi
import filetype
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from crosspost.post import MAX_MEDIA_BYTES, MEDIA_TYPES

MAX_REDIRECTS: Final = 3
CHUNK: Final = 64 * 1024
EXTENSIONS: Final = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
}
USER_AGENT: Final = "crosspost-media-fetch/1"


class MediaFetchError(ValueError):
    """The URL was refused or its content is not acceptable media; the message says why."""


@dataclass(frozen=True)
class FetchedMedia:
    content: bytes
    mime_type: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.sha256}.{EXTENSIONS[self.mime_type]}"


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _resolve(host: str, port: int, allowed: Collection[str]) -> str:
    """One address of `host` to connect to; refused if any of its addresses is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise MediaFetchError(f"{host}: the name does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise MediaFetchError(f"{host}: the name does not resolve")
    if f"{host}:{port}" not in allowed:
        for address in addresses:
            if _refused(address):
                raise MediaFetchError(
                    f"{host} resolves to {address}, a private, loopback or link-local address:"
                    " refused"
                )
    return str(addresses[0])


def _pool(
    scheme: str, host: str, address: str, port: int, timeout: float
) -> urllib3.HTTPConnectionPool:
    common = {
        "port": port,
        "timeout": urllib3.Timeout(connect=timeout, read=timeout),
        "retries": False,
        "maxsize": 1,
    }
    if scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address,
            server_hostname=host,
            assert_hostname=host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            **common,  # type: ignore[arg-type]
        )
    return urllib3.HTTPConnectionPool(address, **common)  # type: ignore[arg-type]


def fetch_media(
    url: str,
    *,
    max_bytes: int = MAX_MEDIA_BYTES,
    timeout: float = 10.0,
    allowed: Collection[str] = (),
    allow_http: bool = False,
) -> FetchedMedia:
    """The image or video at `url` (https; `allow_http` and `allowed` "host:port" pairs that may
    be private exist for tests against fakes on 127.0.0.1)."""
    deadline = time.monotonic() + timeout
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        schemes = ("https", "http") if allow_http else ("https",)
        if parts.scheme not in schemes or not parts.hostname:
            raise MediaFetchError(f"{_safe(current)}: only https URLs are fetched")
        if parts.username or parts.password:
            raise MediaFetchError(f"{_safe(current)}: URLs with credentials are refused")
        host = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise MediaFetchError(f"{_safe(current)}: not a valid port") from None
        address = _resolve(host, port, allowed)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        pool = _pool(parts.scheme, host, address, port, max(0.1, deadline - time.monotonic()))
        try:
            response = pool.urlopen(
                "GET",
                path,
                headers={
                    "Host": parts.netloc.rsplit("@", 1)[-1],
                    "User-Agent": USER_AGENT,
                    "Accept": "image/*, video/*",
                },
                redirect=False,
                preload_content=False,
                retries=False,
            )
        except Urllib3Error as exc:
            raise MediaFetchError(f"{host}: could not fetch ({type(exc).__name__})") from None
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    raise MediaFetchError(f"{host}: a redirect without a Location")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise MediaFetchError(f"{host}: answered HTTP {response.status}")
            return _read(response, host, max_bytes, deadline)
        finally:
            response.release_conn()
            pool.close()
    raise MediaFetchError(f"{_safe(url)}: more than {MAX_REDIRECTS} redirects")


def _read(
    response: urllib3.BaseHTTPResponse, host: str, max_bytes: int, deadline: float
) -> FetchedMedia:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise MediaFetchError(f"{host}: {declared} bytes, the most is {max_bytes}")
    body = bytearray()
    try:
        for chunk in response.stream(CHUNK):
            body.extend(chunk)
            if len(body) > max_bytes:
                raise MediaFetchError(f"{host}: more than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise MediaFetchError(f"{host}: took too long")
    except Urllib3Error as exc:
        raise MediaFetchError(f"{host}: could not fetch ({type(exc).__name__})") from None
    kind = filetype.guess(bytes(body[:8192]))
    mime = kind.mime if kind else None
    if mime not in MEDIA_TYPES:
        raise MediaFetchError(
            f"{host}: content is {mime or 'not an image or video'}; allowed:"
            f" {', '.join(sorted(MEDIA_TYPES))}"
        )
    content = bytes(body)
    return FetchedMedia(content, mime, hashlib.sha256(content).hexdigest())


def _safe(url: str) -> str:
    """The URL without query or credentials, for messages (a query may carry a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{parts.path}"[:200]


class MediaFolder:
    """Media files by content: `<sha256>.<ext>` under one folder, so a name is a stable URL
    and the same bytes are kept once."""

    NAME: Final = re.compile(r"[0-9a-f]{64}\.(?:jpg|png|gif|webp|mp4|mov)")

    def __init__(self, root: Path) -> None:
        self.root = root

    def store(self, content: bytes, mime_type: str) -> str:
        name = f"{hashlib.sha256(content).hexdigest()}.{EXTENSIONS[mime_type]}"
        target = self.root / name
        if not target.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.part")
            partial.write_bytes(content)
            partial.replace(target)
        return name

    def store_file(self, source: Path, expected_sha256: str | None = None) -> str | None:
        """Copy an image or video into the folder; None if it is not one (or not the file
        whose digest was expected)."""
        try:
            if source.stat().st_size > MAX_MEDIA_BYTES:
                return None
            content = source.read_bytes()
        except OSError:
            return None
        kind = filetype.guess(content[:8192])
        if kind is None or kind.mime not in MEDIA_TYPES:
            return None
        if expected_sha256 and hashlib.sha256(content).hexdigest() != expected_sha256:
            return None
        return self.store(content, kind.mime)

    def name_for(self, sha256: str, mime_type: str | None) -> str | None:
        extension = EXTENSIONS.get(mime_type or "")
        return f"{sha256}.{extension}" if extension else None

    def path(self, name: str) -> Path | None:
        if not self.NAME.fullmatch(name):
            return None
        found = self.root / name
        return found if found.is_file() else None
