"""The gateway's ASGI handler (llmgateway/handler.py), driven through the ASGI protocol."""

from __future__ import annotations

import logging

import pytest
from django.test import override_settings

from llmgateway.asgi import application


def receiver(*chunks: bytes):
    """An ASGI receive delivering `chunks` as one request body, counting the reads."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive():
        receive.reads += 1
        return messages.pop(0)

    receive.reads = 0
    return receive


@override_settings(GATEWAY_MAX_BODY_BYTES=10)
async def test_a_body_within_the_limit_is_kept_whole():
    body, too_large = await application.read_limited_body(receiver(b"12345", b"67890"))
    assert (body.read(), too_large) == (b"1234567890", False)


@override_settings(GATEWAY_MAX_BODY_BYTES=10)
async def test_a_body_over_the_limit_is_read_to_its_end_and_not_kept():
    receive = receiver(b"12345", b"67890", b"x" * 1000, b"y")
    body, too_large = await application.read_limited_body(receive)
    assert too_large and body.read() == b""
    assert receive.reads == 4  # drained, so the connection can serve the next request


async def test_a_client_leaving_during_the_body_aborts_the_request():
    from django.core.exceptions import RequestAborted

    async def receive():
        return {"type": "http.disconnect"}

    with pytest.raises(RequestAborted):
        await application.read_limited_body(receive)


async def _get(path: str) -> int:
    """GET `path` through the ASGI application; its status."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 5),
        "server": ("127.0.0.1", 80),
    }
    await application(scope, receiver(b""), send)
    return sent[0]["status"]


async def test_error_responses_are_logged_only_when_the_logger_keeps_them(caplog):
    """Django logs every 4xx from a thread; here only what django.request keeps is."""
    caplog.set_level(logging.ERROR, logger="django.request")
    assert await _get("/v1/no-such-path") == 404
    assert not [r for r in caplog.records if r.name == "django.request"]
    caplog.set_level(logging.WARNING, logger="django.request")
    assert await _get("/v1/no-such-path") == 404
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert (record.levelno, record.status_code) == (logging.WARNING, 404)
    assert record.getMessage() == "Not Found: /v1/no-such-path"
