"""Image intake: data: URLs, local paths, and http(s) fetching without SSRF holes.

Every server here is a real HTTP server on 127.0.0.1. No traffic may leave loopback:
the `no_outside_traffic` guard fails any connection to another address, and records
every connection so tests can assert that refused URLs were refused before connecting.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import time
from collections.abc import Iterator

import pytest

from llmgateway.vision.intake import ImageRefused, address_public, image_bytes
from tests.vision import images
from tests.vision.servers import RED_PNG, ImageServer

QUICK_S = 2.0


@pytest.fixture(scope="module")
def server_a() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="module")
def server_b() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(autouse=True)
def vision_settings(settings):
    settings.VISION_ALLOWED_HOSTS = []
    settings.VISION_ALLOWED_NETWORKS = []
    settings.VISION_FETCH_TIMEOUT = 1.0
    settings.VISION_MAX_IMAGE_BYTES = 200_000
    settings.VISION_LOCAL_DIR = ""
    settings.VISION_FETCH_ENABLED = True
    return settings


@pytest.fixture(autouse=True)
def connections(monkeypatch) -> list[tuple]:
    """Every address a socket connects to; anything but loopback fails the test."""
    seen: list[tuple] = []
    original, original_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address) -> None:
        seen.append(address)
        host = address[0] if isinstance(address, tuple) else ""
        if host not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a connection to {address} was attempted")

    def connect(self, address):
        check(address)
        return original(self, address)

    def connect_ex(self, address):
        check(address)
        return original_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return seen


async def refused(source: str, param: str = "images[0]") -> ImageRefused:
    started = time.monotonic()
    with pytest.raises(ImageRefused) as caught:
        await image_bytes(source=source, param=param)
    assert time.monotonic() - started < QUICK_S
    assert caught.value.param == param
    return caught.value


# ---- data: URLs ----------------------------------------------------------------------------


async def test_data_url() -> None:
    assert await image_bytes(source=images.data_url(RED_PNG), param="p") == RED_PNG


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:text/plain;base64,aGVsbG8=", "Unsupported image type"),
        ("data:image/svg+xml;base64,PHN2Zz4=", "Unsupported image type"),
        ("data:image/png,rawbytes", "base64"),
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("data:image/png;base64", "malformed"),
    ],
)
async def test_bad_data_urls(url: str, message: str) -> None:
    assert message in (await refused(url, "messages[0].content[1]")).message


async def test_data_url_size_limit(settings) -> None:
    payload = base64.b64encode(b"\0" * (settings.VISION_MAX_IMAGE_BYTES + 1)).decode()
    assert "larger than" in (await refused(f"data:image/png;base64,{payload}")).message


# ---- local paths ---------------------------------------------------------------------------


async def test_local_paths_off_by_default(tmp_path) -> None:
    (tmp_path / "red.png").write_bytes(RED_PNG)
    assert "not enabled" in (await refused(str(tmp_path / "red.png"))).message


async def test_local_paths_under_the_directory_only(tmp_path, settings) -> None:
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "red.png").write_bytes(RED_PNG)
    (tmp_path / "secret.png").write_bytes(RED_PNG)
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    settings.VISION_LOCAL_DIR = str(allowed)
    assert await image_bytes(source=str(allowed / "red.png"), param="p") == RED_PNG
    assert await image_bytes(source=f"file://{allowed}/red.png", param="p") == RED_PNG
    for path in (
        f"{allowed}/../secret.png",
        str(allowed / "link.png"),
        "/etc/passwd",
        str(allowed / "missing.png"),
        str(allowed),
    ):
        assert "not an allowed file" in (await refused(path)).message


# ---- http(s): what is refused before any connection ---------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "https://192.168.1.1/a.png",
        "http://0.0.0.0/a.png",
        "http://224.0.0.1/a.png",
        # IPv6 transition addresses wrapping private or metadata IPv4 addresses.
        "http://[2002:a9fe:a9fe::]/latest/meta-data/",  # 6to4 of 169.254.169.254
        "http://[2002:a00:1::]/a.png",  # 6to4 of 10.0.0.1
        "http://[2002:7f00:1::1]/a.png",  # 6to4 of 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 of 169.254.169.254
        "http://[64:ff9b::c0a8:101]/a.png",  # NAT64 of 192.168.1.1
        "http://[64:ff9b:1::a00:1]/a.png",  # local-use NAT64 of 10.0.0.1
        "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/a.png",  # Teredo, client 10.0.0.1
        "http://[fec0::1]/a.png",  # site-local
    ],
)
async def test_non_public_addresses_are_refused_before_connecting(url, connections) -> None:
    assert "non-public address" in (await refused(url)).message
    assert connections == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("::ffff:10.0.0.1", False),
        # 6to4 (2002::/16): the IPv4 address in bits 16-47.
        ("2002:808:808::1", True),
        ("2002:a9fe:a9fe::", False),
        ("2002:a00:1::", False),
        ("2002:c0a8:101::", False),
        # Teredo (2001::/32): its server's and its (obfuscated) client's address.
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True),  # 65.54.227.120, client 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # client 10.0.0.1
        ("2001:0:a00:1:8000:63bf:f7f7:f7f7", False),  # server 10.0.0.1
        # NAT64: the well-known /96 prefix and the local-use /48 (RFC 6052, RFC 8215).
        ("64:ff9b::808:808", True),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b:1::a00:1", False),
        ("64:ff9b:1:a00:1:0:808:808", False),  # /48 embedding: 10.0.0.1
        ("64:ff9b:1:808:8:800:0:0", False),  # public as a /48, 0.0.0.0 as a /96
        # Site-local (fec0::/10, deprecated but still routed in some networks).
        ("fec0::1", False),
        ("feff:ffff::1", False),
    ],
)
def test_address_public_table(address: str, public: bool) -> None:
    assert address_public(ipaddress.ip_address(address)) is public


async def test_loopback_is_refused(server_a, connections) -> None:
    for url in (
        f"{server_a.base}/red.png",
        f"http://localhost:{server_a.port}/red.png",  # a name that resolves to loopback
        f"http://[::1]:{server_a.port}/red.png",
        f"http://[::ffff:127.0.0.1]:{server_a.port}/red.png",
        f"http://2130706433:{server_a.port}/red.png",  # 127.0.0.1 as one number
    ):
        assert "non-public address" in (await refused(url)).message, url
    assert connections == []
    assert server_a.requests == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.png", "data: URL or an http(s) URL"),
        ("http://user:pw@example.com/a.png", "credentials"),
        ("http:///a.png", "no host"),
        ("http://example.com:99999/a.png", "malformed"),
        ("gopher://127.0.0.1/", "data: URL or an http(s) URL"),
    ],
)
async def test_malformed_urls(url: str, message: str, connections) -> None:
    assert message in (await refused(url)).message
    assert connections == []


async def test_fetching_can_be_switched_off(settings, server_a) -> None:
    settings.VISION_FETCH_ENABLED = False
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{server_a.port}"]
    assert "not enabled" in (await refused(f"{server_a.base}/red.png")).message


# ---- http(s): allow-listed servers ----------------------------------------------------------


async def test_allow_listed_host_and_port(settings, server_a, server_b) -> None:
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{server_a.port}"]
    before_b = len(server_b.requests)
    assert await image_bytes(source=f"{server_a.base}/red.png", param="p") == RED_PNG
    # Same host, another port: not on the list.
    assert "non-public" in (await refused(f"{server_b.base}/red.png")).message
    assert len(server_b.requests) == before_b


async def test_allow_listed_network(settings, server_a) -> None:
    settings.VISION_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert await image_bytes(source=f"{server_a.base}/red.png", param="p") == RED_PNG


async def test_redirect_to_loopback_is_refused(settings, server_a, server_b) -> None:
    """A allow-listed server redirects to B on another loopback port: B sees nothing."""
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{server_a.port}"]
    before_a, before_b = len(server_a.requests), len(server_b.requests)
    for target in (f"{server_b.base}/red.png", f"http://localhost:{server_a.port}/red.png"):
        error = await refused(f"{server_a.base}/redirect?to={target}")
        assert "non-public" in error.message
    assert len(server_a.requests) == before_a + 2
    assert len(server_b.requests) == before_b


async def test_redirect_to_an_allowed_place_is_followed(settings, server_a) -> None:
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{server_a.port}"]
    url = f"{server_a.base}/redirect?to=/red.png"
    assert await image_bytes(source=url, param="p") == RED_PNG


async def test_redirect_loop_is_cut(settings, server_a) -> None:
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{server_a.port}"]
    settings.VISION_MAX_REDIRECTS = 2
    inner = "/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/red.png"
    assert "too many times" in (await refused(f"{server_a.base}{inner}")).message


async def test_oversized_bodies(settings, server_a) -> None:
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{server_a.port}"]
    assert "larger than" in (await refused(f"{server_a.base}/big")).message
    assert "larger than" in (await refused(f"{server_a.base}/big-chunked")).message


async def test_slow_server_times_out(settings, server_a) -> None:
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{server_a.port}"]
    settings.VISION_FETCH_TIMEOUT = 0.5
    started = time.monotonic()
    assert "longer than 0.5 s" in (await refused(f"{server_a.base}/slow")).message
    assert time.monotonic() - started < 1.5


async def test_content_type_and_status_checks(settings, server_a) -> None:
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{server_a.port}"]
    assert "text/html" in (await refused(f"{server_a.base}/html")).message
    assert "HTTP 404" in (await refused(f"{server_a.base}/nothing.png")).message


async def test_connects_to_the_checked_address(settings, server_a, monkeypatch) -> None:
    """DNS rebinding: the name is resolved once; the connection goes to that address.

    The fake resolver answers loopback the first time and 10.0.0.1 after that; a
    second lookup of the name (by us or by the HTTP client) would aim at 10.0.0.1.
    """
    settings.VISION_ALLOWED_HOSTS = [f"rebind.test:{server_a.port}"]
    lookups: list[str] = []
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host == "rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "10.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    before = len(server_a.requests)
    url = f"http://rebind.test:{server_a.port}/red.png"
    assert await image_bytes(source=url, param="p") == RED_PNG
    assert lookups == ["rebind.test"]
    assert server_a.requests[before:] == [("/red.png", f"rebind.test:{server_a.port}")]


async def test_a_name_with_any_forbidden_address_is_refused(settings, monkeypatch) -> None:
    def fake(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert "non-public" in (await refused("http://mixed.test/a.png")).message
