"""Server-sent events exactly as OpenAI frames them: `data: <json>\\n\\n`, then `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.http import StreamingHttpResponse

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_response(body: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["cache-control"] = "no-cache"
    # Tell nginx-style proxies not to buffer the stream.
    response["x-accel-buffering"] = "no"
    return response
