"""uvicorn's httptools protocol with the limits uvicorn does not set.

uvicorn (0.55) bounds neither the size of a request's head nor the time a
client may take to send it or its body: its only timer is the keep-alive one,
armed after a response. A client could send an 8 MB header, or hold a
connection open for good by sending a header line every few seconds
(slowloris). This protocol, what `serve` and `runserver` run
(settings.HTTP_* values):

- the request line may be at most HTTP_MAX_REQUEST_LINE_BYTES: 414, closed;
- the request line and headers together at most HTTP_MAX_HEADER_BYTES: 431,
  closed. Bytes are counted as they arrive, so no more than the limit and one
  read are ever buffered;
- a request's head must arrive within HTTP_HEADER_TIMEOUT seconds of its first
  byte (of the connection, for its first request): 408, closed;
- its body within HTTP_BODY_TIMEOUT seconds of its head: 408 if nothing was
  answered yet, closed either way (the app sees the client leave).

Refusals are written directly, as uvicorn writes its own 400, since no ASGI
request exists yet. The settings are read once per process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache

import httptools
from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int
    max_request_line_bytes: int
    header_timeout: float
    body_timeout: float


@cache
def limits() -> Limits:
    return Limits(
        max_header_bytes=settings.HTTP_MAX_HEADER_BYTES,
        max_request_line_bytes=settings.HTTP_MAX_REQUEST_LINE_BYTES,
        header_timeout=settings.HTTP_HEADER_TIMEOUT,
        body_timeout=settings.HTTP_BODY_TIMEOUT,
    )


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits()
        self.in_head = True  # between requests, and until a request's headers are complete
        self.head_bytes = 0
        self.head_line_bytes = 0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends nothing at all is held no longer than a slow head.
        self._arm(self.limits.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.in_head:
            if self.timer is None:
                self._arm(self.limits.header_timeout, self._head_too_slow)
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self.in_head and self.head_bytes > self.limits.max_header_bytes:
                raise _Refused(431, "The request's headers are too large.")
        except _Refused as refused:
            self._refuse(refused.status, str(refused))
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):  # raised in a parser callback
                self._refuse(exc.__context__.status, str(exc.__context__))
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_line_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line_bytes:
            raise _Refused(414, "The request line is too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_line_bytes += len(name) + len(value) + 4
        if len(self.url) + self.head_line_bytes > self.limits.max_header_bytes:
            raise _Refused(431, "The request's headers are too large.")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self._arm(self.limits.body_timeout, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self.in_head = True
        super().on_message_complete()

    # Timers
    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _head_too_slow(self) -> None:
        self.timer = None
        responding = self.cycle is not None and not self.cycle.response_complete
        # A pipelined request's head behind a response still going out waits for it.
        if self.in_head and not responding:
            self._refuse(408, "The request's headers took too long.")

    def _body_too_slow(self) -> None:
        self.timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(408, "The request's body took too long.")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with a plain-text `message` and close the connection."""
        self._disarm()
        if self.transport.is_closing():
            return
        body = message.encode()
        content = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()
        if self.cycle is not None:  # the app learns the client is gone
            self.cycle.disconnected = True
            self.cycle.message_event.set()
