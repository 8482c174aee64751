"""Image intake: the bytes behind a data: URL, an http(s) URL or a local path.

Fetching URLs for clients is a classic SSRF hole, so:
- a URL's host is resolved once, every address it resolves to is checked, and
  the connection goes to the checked address (the name travels only in the
  Host header and TLS SNI), so DNS rebinding between check and connect cannot
  steer us elsewhere;
- only public unicast addresses pass, unless VISION_ALLOWED_HOSTS names the
  host (or host:port) or VISION_ALLOWED_NETWORKS holds the address; an IPv6
  address that carries an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) is
  judged by that IPv4 address, and site-local fec0::/10 is refused;
- redirects are followed by hand, each hop checked like the first;
- one time limit covers the whole fetch, the body is cut off at
  VISION_MAX_IMAGE_BYTES, and only image content types are read;
- proxies from the environment are ignored (a proxy would do its own DNS).

Local paths are read only under VISION_LOCAL_DIR (off by default). Every
refusal raises `ImageRefused`, which the API turns into a 400 naming `param`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from django.conf import settings

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Cloud metadata endpoints; all are already non-public, listed so the intent is explicit.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
SITE_LOCAL = ipaddress.ip_network("fec0::/10")
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
DATA_URL_RE = re.compile(r"data:([^,;]*)((?:;[^,;]*)*),(.*)", re.DOTALL | re.IGNORECASE)
USER_AGENT = "llmgateway-vision/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ImageRefused(Exception):
    """An image that will not be used; `param` names the request field it came from."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


async def image_bytes(*, source: str, param: str) -> bytes:
    """The encoded image behind `source`, or ImageRefused."""
    if source[:5].lower() == "data:":
        return data_url_bytes(source, param=param)
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme in {"http", "https"}:
        if not settings.VISION_FETCH_ENABLED:
            raise ImageRefused("Image URLs are not enabled on this server.", param)
        return await url_fetch(source, param=param)
    if scheme == "file" or source.startswith("/"):
        path = source[len("file://") :] if scheme == "file" else source
        return await asyncio.to_thread(local_read, path, param=param)
    raise ImageRefused("An image must be a data: URL or an http(s) URL.", param)


# ---- data: URLs --------------------------------------------------------------------------


def data_url_bytes(url: str, *, param: str) -> bytes:
    match = DATA_URL_RE.fullmatch(url)
    if match is None:
        raise ImageRefused("The data: URL is malformed.", param)
    media_type = match.group(1).strip().lower()
    if media_type not in IMAGE_TYPES:
        raise ImageRefused(
            f"Unsupported image type {media_type or '(none)'!r}: use PNG, JPEG, WebP or GIF.",
            param,
        )
    if "base64" not in (p.strip().lower() for p in match.group(2).split(";")):
        raise ImageRefused("Image data: URLs must be base64-encoded.", param)
    payload = re.sub(r"\s+", "", match.group(3))
    if len(payload) // 4 * 3 > settings.VISION_MAX_IMAGE_BYTES + 3:
        raise ImageRefused(_too_large(), param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("The data: URL is not valid base64.", param) from None
    if len(data) > settings.VISION_MAX_IMAGE_BYTES:
        raise ImageRefused(_too_large(), param)
    return data


def _too_large() -> str:
    return f"The image is larger than {settings.VISION_MAX_IMAGE_BYTES} bytes."


# ---- local files -------------------------------------------------------------------------


def local_read(path: str, *, param: str) -> bytes:
    """Read `path` if it lies under VISION_LOCAL_DIR (symlinks resolved first)."""
    root = settings.VISION_LOCAL_DIR
    if not root:
        raise ImageRefused("Local image paths are not enabled on this server.", param)
    base = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([base, real]) != base or not os.path.isfile(real):
        raise ImageRefused("The image path is not an allowed file.", param)
    limit = settings.VISION_MAX_IMAGE_BYTES
    try:
        with open(real, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        raise ImageRefused("The image path is not an allowed file.", param) from None
    if len(data) > limit:
        raise ImageRefused(_too_large(), param)
    return data


# ---- http(s) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where one hop connects: a checked address, and the name it stands for."""

    scheme: str
    host: str
    port: int
    address: IPAddress
    path: str

    @property
    def connect_url(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


async def url_fetch(url: str, *, param: str) -> bytes:
    """GET an image URL under the rules in the module docstring."""
    timeout = settings.VISION_FETCH_TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            for _ in range(settings.VISION_MAX_REDIRECTS + 1):
                target = await target_resolve(url, param=param)
                result = await _get(target, param)
                if isinstance(result, bytes):
                    return result
                url = urljoin(url, result)
    except TimeoutError:
        raise ImageRefused(f"Fetching the image took longer than {timeout:g} s.", param) from None
    raise ImageRefused("The image URL redirected too many times.", param)


async def _get(target: Target, param: str) -> bytes | str:
    """The body of a 200 image response, or a redirect's Location to follow."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    headers = {"Host": target.host_header, "Accept": "image/*", "User-Agent": USER_AGENT}
    # A client per hop: pooled connections are keyed by address, not by name.
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None) as client:
        try:
            request = client.build_request(
                "GET", target.connect_url, headers=headers, extensions=extensions
            )
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise ImageRefused(
                f"The image URL could not be fetched ({_reason(exc)}).", param
            ) from None
        try:
            if response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise ImageRefused("The image URL redirected without a Location.", param)
                return location
            if response.status_code != 200:
                raise ImageRefused(
                    f"Fetching the image failed with HTTP {response.status_code}.", param
                )
            return await _body(response, param)
        except httpx.HTTPError as exc:
            raise ImageRefused(
                f"The image URL could not be fetched ({_reason(exc)}).", param
            ) from None
        finally:
            await response.aclose()


async def _body(response: httpx.Response, param: str) -> bytes:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in IMAGE_TYPES:
        raise ImageRefused(
            f"The image URL returned {content_type or 'no content type'!r}, "
            "not a PNG, JPEG, WebP or GIF image.",
            param,
        )
    limit = settings.VISION_MAX_IMAGE_BYTES
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ImageRefused(_too_large(), param)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise ImageRefused(_too_large(), param)
    return bytes(body)


def _reason(exc: httpx.HTTPError) -> str:
    return type(exc).__name__


async def target_resolve(url: str, *, param: str) -> Target:
    """Parse `url`, resolve its host once and check every address; ImageRefused if any fails."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ImageRefused("The image URL is malformed.", param) from None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise ImageRefused("Image URLs must use http or https.", param)
    if parts.username is not None or parts.password is not None:
        raise ImageRefused("Image URLs must not carry credentials.", param)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ImageRefused("The image URL has no host.", param)
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ImageRefused("The image URL's host name is invalid.", param) from None
    port = port or (443 if scheme == "https" else 80)
    addresses = await _resolve(host, port, param)
    for address in addresses:
        if not address_permitted(address, host=host, port=port):
            raise ImageRefused(
                "The image URL points at a private, loopback, link-local or otherwise "
                "non-public address, which this server does not fetch from.",
                param,
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme=scheme, host=host, port=port, address=addresses[0], path=path)


async def _resolve(host: str, port: int, param: str) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ImageRefused("The image URL's host could not be resolved.", param) from None
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise ImageRefused("The image URL's host could not be resolved.", param)
    return addresses


def address_public(address: IPAddress) -> bool:
    """Whether `address` is a public unicast address, judged through any IPv4 address
    it carries: a 6to4, Teredo or NAT64 address reaches its embedded IPv4 (through a
    relay or translator), so it is as public as that address and no more."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in SITE_LOCAL:  # deprecated, but still routed inside some networks
            return False
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return all(_unicast_public(inner) for inner in embedded)
    return _unicast_public(address)


def _unicast_public(address: IPAddress) -> bool:
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and address not in METADATA_ADDRESSES
    )


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 transition address leads to, or None if it carries none.

    IPv4-mapped (::ffff:a.b.c.d) and 6to4 (2002:aabb:ccdd::/48) carry one; Teredo
    (2001::/32) carries its server's and its client's; a NAT64 address carries one
    (RFC 6052). The well-known prefix 64:ff9b::/96 puts it in the last 32 bits; the
    local-use 64:ff9b:1::/48 (RFC 8215) may hold it where a /48 prefix puts it or, if
    the operator uses a longer prefix, in the last 32 bits: both are returned.
    """
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo
    if address in NAT64_WELL_KNOWN:
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address in NAT64_LOCAL:
        value = int(address)
        # RFC 6052 for a /48 prefix: bits 48-63, then (after the u octet) bits 72-87.
        after_48 = ((value >> 64) & 0xFFFF) << 16 | (value >> 40) & 0xFFFF
        return (ipaddress.IPv4Address(after_48), ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return None


def address_permitted(address: IPAddress, *, host: str, port: int) -> bool:
    """Public addresses pass; others only through the allow-list settings."""
    if address_public(address):
        return True
    allowed = {entry.strip().lower() for entry in settings.VISION_ALLOWED_HOSTS}
    bracketed = f"[{host}]" if ":" in host else host
    if {host, bracketed, f"{bracketed}:{port}"} & allowed:
        return True
    return any(
        address in ipaddress.ip_network(network, strict=False)
        for network in settings.VISION_ALLOWED_NETWORKS
        if ipaddress.ip_network(network, strict=False).version == address.version
    )
