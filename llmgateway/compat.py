"""Other packages' private names, each used through one function here and nowhere else.

tests/test_compat.py pins what each function relies on and fails when the package
changes under it: after upgrading Django or tritonclient, a failure there names the
function to look at again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc
    from django.http import HttpResponseBase
    from tritonclient.grpc.aio import InferenceServerClient

logger = logging.getLogger(__name__)


def response_on_close(response: HttpResponseBase, closer: Callable[[], None]) -> None:
    """Have `closer` called when `response` is closed: once it has been sent, or when
    the client left before a stream's body began (its generator then never runs).

    Django keeps its own closers (the request's, a file's) in the private list
    `_resource_closers` and has no public way to add one.
    """
    response._resource_closers.append(closer)


def response_close_quietly(response: HttpResponseBase) -> None:
    """`HttpResponseBase.close()` without its `request_finished` signal (handler.py says
    why): every closer runs, one failing does not stop the others."""
    for closer in response._resource_closers:
        try:
            closer()
        except Exception:
            logger.exception("a response closer failed")
    response._resource_closers.clear()
    response.closed = True


def response_headers_set(response: HttpResponseBase, headers: dict[str, str]) -> None:
    """Set `headers` on `response`, as `response[name] = value` does, for headers the
    gateway wrote itself (x-ratelimit-*, retry-after): lower-case ASCII names, ASCII
    values. Django's __setitem__ re-encodes and checks each name and value (~2 us each,
    six to eight per request with the platform on); these are checked once here, and
    anything else goes through Django. Its private `_store` maps the lower-cased name
    to (name, value)."""
    store = response.headers._store
    for name, value in headers.items():
        plain = name.isascii() and name.islower() and value.isascii()
        if plain and "\n" not in value and "\r" not in value:
            store[name] = (name, value)
        else:
            response[name] = value


def response_header_pairs(response: HttpResponseBase) -> list[tuple[bytes, bytes]]:
    """The response's headers as ASGI wants them, in Django's order and case, without
    cookies: what Django's ASGIHandler.send_response builds from `response.items()`,
    read from the private `_store` (lower-cased name -> (name, value), both str once
    set) instead of through the mapping's per-header lookups (~1 us per header, ten to
    twelve per request with the platform on)."""
    return [
        (name.encode("ascii"), value.encode("latin1"))
        for name, value in response.headers._store.values()
    ]


def grpc_channel(client: InferenceServerClient) -> grpc.aio.Channel:
    """The gRPC channel tritonclient's aio client opened (its private `_channel`).

    The Triton core makes its own calls on it (llmgateway/triton/stream.py says why),
    so the client's calls and the core's share one connection per Triton.
    """
    return client._channel
