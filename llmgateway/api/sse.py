"""Server-sent events exactly as OpenAI frames them: `data: <json>\\n\\n`, then `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.http import StreamingHttpResponse

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class EventStream(StreamingHttpResponse):
    """A stream of server-sent events whose body yields bytes only.

    Under ASGI the gateway's handler sends `events` as they come
    (GatewayASGIHandler.send_response), without the wrapping generators Django
    puts around a streaming body for each chunk; under WSGI it is a plain
    StreamingHttpResponse.
    """

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, content_type="text/event-stream")
        self.events = events


def sse_response(body: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = EventStream(body)
    response["cache-control"] = "no-cache"
    # Tell nginx-style proxies not to buffer the stream.
    response["x-accel-buffering"] = "no"
    return response
