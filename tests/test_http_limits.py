"""`serve`'s HTTP limits over raw sockets (llmgateway/http_limits.py): oversized heads are
refused and their connections closed, and a client that sends too slowly is cut off."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from llmgateway.devtriton.server import free_port
from tests.conftest import ROOT, LiveGateway, _database_env, gateway_wait

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
SLACK = 1.5  # a loaded 2-core machine's scheduling, on top of a timeout


@pytest.fixture(scope="module")
def served(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[LiveGateway]:
    """`manage.py serve` itself, with short timeouts and the default size limits."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        **os.environ,
        **_database_env(),
        "HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--no-migrate", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = LiveGateway(f"http://127.0.0.1:{port}", process, log_path)
    try:
        yield gateway_wait(server, 60, "serve")
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def connect(server: LiveGateway) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def read_until_closed(sock: socket.socket, seconds: float = 30) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def send_head(sock: socket.socket, head: bytes) -> None:
    # Refused before we finished sending: the answer is still there to read.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(head)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(100))
            + b"\r\n",
            431,
        ),
        (b"GET /health?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ],
    ids=["one-100KB-header", "100-headers-of-1KB", "20KB-request-line"],
)
def test_an_oversized_head_is_refused_and_closed(served, head, status):
    with connect(served) as sock:
        send_head(sock, head)
        response, _ = read_until_closed(sock)
    assert status_of(response) == status, response[:200]
    assert b"connection: close" in response.lower()


def test_a_head_under_the_limits_is_served(served):
    headers = {f"x-h{i}": "c" * 1000 for i in range(50)}  # with the URL ~59 KB: < 64 KiB
    response = httpx.get(served.url + "/health?" + "q" * 8000, headers=headers, timeout=30)
    assert response.status_code == 200


def test_a_stalled_head_is_closed_within_its_timeout(served):
    with connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        # Slowloris: a header line every half second, never the blank line.
        for i in range(int((HEADER_TIMEOUT + SLACK) / 0.5) + 2):
            time.sleep(0.5)
            try:
                sock.sendall(b"X-Drip-%d: x\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
        response, closed = read_until_closed(sock)
    assert closed - started <= HEADER_TIMEOUT + SLACK
    assert status_of(response) == 408


def test_a_silent_connection_is_closed_within_the_head_timeout(served):
    with connect(served) as sock:
        started = time.monotonic()
        response, closed = read_until_closed(sock)
    assert closed - started <= HEADER_TIMEOUT + SLACK
    assert status_of(response) == 408


def test_a_stalled_body_is_closed_within_its_timeout(served):
    with connect(served) as sock:
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"prompt": '
        )
        started = time.monotonic()
        response, closed = read_until_closed(sock)
    assert closed - started <= BODY_TIMEOUT + SLACK
    assert status_of(response) == 408


def test_keep_alive_and_bodies_still_work(served):
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
        big = {"model": "none", "prompt": "x" * 1_000_000}
        assert client.post("/generate", json=big).status_code == 401  # no key: read whole
        time.sleep(HEADER_TIMEOUT + 0.5)  # idle between requests: uvicorn's keep-alive
        assert client.get("/health").status_code == 200
