"""Server-sent events exactly as OpenAI frames them: `data: <json>\\n\\n`, then `data: [DONE]`.

The shapers frame their own streams with these (the runner knows no SSE); a stream
that fails after it started ends with `failure`: the error envelope, then [DONE].
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from django.http import StreamingHttpResponse

from llmgateway.errors import APIError

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def failure(error: APIError) -> bytes:
    """The end of a stream that failed after it started: the error event, then [DONE]."""
    return event(error.body()) + DONE


class ChunkFrame:
    """The events of one /v1 stream: `{**shared, "choices": [...], "usage": ...}`.

    What every chunk repeats (id, object, created, model, ...) is serialised once per
    stream; each chunk then serialises only its choice. With `usage_null` every chunk
    but the usage one carries `"usage": null`, as OpenAI sends with include_usage.
    """

    __slots__ = ("_open", "_close")

    def __init__(self, shared: dict[str, Any], *, usage_null: bool) -> None:
        head = orjson.dumps(shared)  # b"{...}": reopened to append the choices
        self._open = b"data: " + head[:-1] + b',"choices":['
        self._close = b'],"usage":null}\n\n' if usage_null else b"]}\n\n"

    def choice(self, choice: dict[str, Any]) -> bytes:
        return self._open + orjson.dumps(choice) + self._close

    def text_chunks(self, before: bytes, after: bytes) -> TextChunks:
        """The maker of this stream's text-only chunks: `before` % index + the text as
        JSON + `after` is the choice (see TextChunks)."""
        return TextChunks(self._open, before, after + self._close)

    def usage(self, usage: dict[str, Any]) -> bytes:
        """The last chunk: no choices, the usage."""
        return self._open + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"


class TextChunks:
    """A stream's most frequent event, a choice's text with no logprobs and no finish,
    from bytes made once per choice: only the text is serialised per event. The bytes
    are those of ChunkFrame.choice with the same dict (orjson escapes a string alike
    alone or in a dict; tests/api/test_sse.py)."""

    __slots__ = ("_open", "_before", "_after", "_heads")

    def __init__(self, open_: bytes, before: bytes, after: bytes) -> None:
        self._open, self._before, self._after = open_, before, after
        self._heads: dict[int, bytes] = {}

    def __call__(self, index: int, text: str) -> bytes:
        head = self._heads.get(index)
        if head is None:
            head = self._heads[index] = self._open + self._before % index
        return head + orjson.dumps(text) + self._after


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


async def head_first(head: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`body`'s chunks, the first one written together with `head` (the role chunks or
    `response.created`: on the time to first token that is a write and a client wake-up
    fewer, with the same bytes). If `body` fails before its first chunk, `head` goes out
    alone and the error event follows it; if it ends without one, `head` goes out last."""
    try:
        async with contextlib.aclosing(body) as chunks:
            async for chunk in chunks:
                if head:
                    chunk, head = head + chunk, b""
                yield chunk
    except Exception:
        if head:
            yield head
        raise
    if head:
        yield head
