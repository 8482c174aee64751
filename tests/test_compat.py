"""The adapters over other packages' private names (llmgateway/compat.py): each test
fails when the package changes what its adapter relies on."""

from __future__ import annotations

import inspect

import grpc
import pytest
from django.core import signals
from django.db import close_old_connections
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from tritonclient.grpc.aio import InferenceServerClient

from llmgateway.compat import grpc_channel, response_close_quietly, response_on_close

# HttpResponseBase.close() as response_close_quietly mirrors it, minus the signal. If
# Django changes it, response_close_quietly must be checked against the new one.
DJANGO_CLOSE = """    def close(self):
        for closer in self._resource_closers:
            try:
                closer()
            except Exception:
                pass
        # Free resources that were still referenced.
        self._resource_closers.clear()
        self.closed = True
        signals.request_finished.send(sender=self._handler_class)
"""


@pytest.fixture
def finished() -> list[object]:
    """The senders of request_finished while the test runs, in place of Django's own
    receiver (which would close this process's database connections)."""
    sent: list[object] = []

    def receiver(sender, **kwargs) -> None:
        sent.append(sender)

    signals.request_finished.disconnect(close_old_connections)
    signals.request_finished.connect(receiver)
    try:
        yield sent
    finally:
        signals.request_finished.disconnect(receiver)
        signals.request_finished.connect(close_old_connections)


@pytest.mark.parametrize("make", [lambda: HttpResponse("x"), lambda: StreamingHttpResponse([])])
def test_django_calls_a_closer_added_on_close(make, finished) -> None:
    response, calls = make(), []
    response_on_close(response, lambda: calls.append("closed"))
    response.close()
    assert calls == ["closed"]
    assert len(finished) == 1


def test_closing_quietly_runs_every_closer_without_the_signal(finished) -> None:
    response, calls = HttpResponse("x"), []

    def failing() -> None:
        raise RuntimeError("a closer that fails")

    response_on_close(response, failing)
    response_on_close(response, lambda: calls.append("second"))
    response_close_quietly(response)
    assert calls == ["second"]
    assert response.closed
    assert finished == []
    response_close_quietly(response)  # nothing left to run twice
    assert calls == ["second"]


def test_django_close_is_what_closing_quietly_mirrors() -> None:
    assert inspect.getsource(HttpResponseBase.close) == DJANGO_CLOSE


async def test_tritonclient_exposes_its_grpc_channel() -> None:
    client = InferenceServerClient("127.0.0.1:1")
    try:
        channel = grpc_channel(client)
        assert isinstance(channel, grpc.aio.Channel)
        # Calls made on it are the core's own: it must take unary-stream calls.
        assert callable(channel.unary_stream)
    finally:
        await client.close()


def test_response_headers_set_stores_what_django_would():
    from django.http import BadHeaderError

    from llmgateway.compat import response_headers_set

    headers = {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-reset-tokens": "6m0s",
        "Retry-After": "1",  # not lower-case: through Django
    }
    ours, django = HttpResponse(b"{}"), HttpResponse(b"{}")
    response_headers_set(ours, headers)
    for name, value in headers.items():
        django[name] = value
    assert ours.headers._store == django.headers._store
    assert ours.serialize_headers() == django.serialize_headers()
    assert ours["X-RateLimit-Limit-Requests"] == "100"
    # What Django refuses, it still refuses.
    with pytest.raises(BadHeaderError):
        response_headers_set(HttpResponse(), {"x-evil": "a\r\nset-cookie: b"})


async def sent_by(handler, response) -> list[dict]:
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    await handler.send_response(response, send)
    return messages


@pytest.mark.parametrize(
    ("body", "cookie"),
    [(b'{"ok": true}', False), (b"x" * (2**16 + 5), False), (b"{}", True)],
    ids=["json", "larger than a chunk", "with a cookie"],
)
async def test_send_response_sends_what_django_would(body, cookie):
    """The gateway's send_response (response_header_pairs, one body message) against
    Django's: the same status, headers in the same order and case, the same bytes."""
    from django.core.handlers.asgi import ASGIHandler

    from llmgateway.compat import response_header_pairs
    from llmgateway.handler import GatewayASGIHandler

    def make() -> HttpResponse:
        response = HttpResponse(body, content_type="application/json", status=201)
        response["X-Request-ID"] = "req_1"
        response["x-ratelimit-remaining-tokens"] = "99"
        response["Content-Disposition"] = 'inline; filename="caf\u00e9"'  # latin-1
        if cookie:
            response.set_cookie("session", "s")
        return response

    ours = await sent_by(GatewayASGIHandler(), make())
    django = await sent_by(ASGIHandler(), make())
    assert ours[0] == django[0]
    assert b"".join(m.get("body", b"") for m in ours) == body
    assert b"".join(m.get("body", b"") for m in django) == body
    assert not ours[-1].get("more_body")
    if not cookie:
        assert response_header_pairs(make()) == django[0]["headers"]
