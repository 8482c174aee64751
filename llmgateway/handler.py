"""Django's ASGI handler, minus per-request thread hops on the API's hot path.

Stock `ASGIHandler` spends three thread hops on every request: the
request_started and request_finished signals (their receivers are sync) and
`response.close()`, each run through `sync_to_async`, inside a fresh
`ThreadSensitiveContext`. Measured on this project's /health: 1.14 ms p50 for
Django vs 0.16 ms for a bare ASGI app under the same uvicorn. For API paths we
keep Django's request/response handling and middleware but run those steps on
the event loop:
- the signals' receivers only reset query logs and close this thread's stale
  database connections; the event loop thread holds none (the ORM runs in
  sync_to_async threads), so they are no-ops here. Stale connections in the
  ORM's worker thread are closed by `llmgateway.db.orm` before each use.
- our API responses' close() releases no resources needing a thread, and its
  request_finished signal is skipped too (`response_close_quietly`): the response's own
  closers (Triton cancellation, settling a stream that never started) run.
- the response is made in the request's own task; a second task only waits
  for the client to leave, then cancels the first (Django makes both new
  tasks and waits for either: a task and a loop iteration more per request).
- URL resolution comes from a cache (`route_match`: the URLconf is fixed).
- the script prefix and the URLconf are set only when they differ from the
  defaults Django falls back to (each is a context-local write, and a request
  finds its caches cold after Triton's work: these costs are per request).
- an error response is logged in a thread, as Django does (a handler such as
  AdminEmailHandler may block), only when the django.request logger would keep
  the record; by default it keeps none below ERROR, so a flood of 4xx costs no
  thread hops (Django's get_response_async makes one per 4xx).
Admin paths go through the stock handler, with the cached URL resolution and
the error logging above.

It also speaks the ASGI lifespan protocol (Django does not): on shutdown it
waits for background work (settlements, request logs: background.py) before
the server's loop stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix, set_urlconf
from django.utils.log import log_response, request_logger

from accounts.logs import body_trim
from llmgateway import background, metrics, tracing
from llmgateway.api.access import access_log
from llmgateway.api.middleware import context_begin
from llmgateway.api.sse import EventStream
from llmgateway.compat import (
    response_close_quietly,
    response_header_pairs,
    response_on_close,
)
from llmgateway.paths import is_api_path, is_unknown_path, route_match


class GatewayASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _fast_path(scope.get("path", "")):
            await self.handle_api(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def lifespan(self, receive, send) -> None:
        probe = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                probe = metrics.loop_lag_probe_start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if probe is not None:
                    probe.cancel()
                await background.shutdown(settings.GATEWAY_SHUTDOWN_SECONDS)
                if tracing.enabled:
                    await asyncio.to_thread(tracing.flush)
                metrics.process_exiting()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle_api(self, scope, receive, send) -> None:
        try:
            body_file, too_large = await self.read_limited_body(receive)
        except RequestAborted:
            return
        if body_file.getbuffer().nbytes > settings.GATEWAY_PREPARE_INLINE_BYTES:
            # Joining a large body and parsing it are two long steps for the loop (a
            # 19 MB body: ~10 ms, then ~25 ms of JSON); other requests run in between.
            await asyncio.sleep(0)
        prefix = get_script_prefix(scope)
        if prefix not in ("", "/"):  # "/" is what Django assumes when none is set
            set_script_prefix(prefix)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            return
        # body_limit_middleware answers 413 (and the request is logged) before any view.
        context = context_begin(request, body_too_large=too_large)
        in_flight = metrics.in_flight(context.route)

        # The response is made in this task; a second one only listens for the client
        # leaving, and then cancels this one. (Django runs both as new tasks and waits
        # for the first to finish: one more task and a loop iteration per request.)
        # Whether the client left is read off the listener's task, which ends on its own
        # only then: no asyncio.Event per request (~760 bytes held by every open stream).
        this = asyncio.current_task()
        listener = asyncio.create_task(self._cancel_on_disconnect(receive, this))
        response = None
        try:
            response = await self.api_response(request)
            if isinstance(response, EventStream):
                body_trim(request)  # a long prompt's body is not held for the whole stream
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not client_left(listener):
                raise  # cancelled from outside (the server stopping), not by the client
        finally:
            listener.cancel()
            left = client_left(listener)
            if left:
                # The client left: the cancel this task got is handled here, not raised.
                this.uncancel()
            if response is not None:
                response_close_quietly(response)
            body_file.close()
            if in_flight is not None:
                in_flight.dec()
            access_log(request, 499 if left or response is None else response.status_code)

    async def api_response(self, request):
        """Django's run_get_response (and get_response_async) for an API path."""
        # No set_urlconf(settings.ROOT_URLCONF): unset, Django resolves with that
        # setting anyway, and this request's task starts with nothing set.
        response = await self._respond(request)
        response._handler_class = self.__class__
        return response

    async def get_response_async(self, request):
        """Django's, with _respond's error logging (admin and other paths)."""
        set_urlconf(settings.ROOT_URLCONF)
        return await self._respond(request)

    async def _respond(self, request):
        """The middleware chain's response, its request closed with it, an error logged
        in a thread only when the django.request logger keeps the record."""
        response = await self._middleware_chain(request)
        response_on_close(response, request.close)
        status = response.status_code
        if status >= 400 and request_logger.isEnabledFor(
            logging.ERROR if status >= 500 else logging.WARNING
        ):
            await sync_to_async(log_response, thread_sensitive=False)(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    async def read_limited_body(self, receive) -> tuple[io.BytesIO, bool]:
        """The request body, in memory, and whether it was over GATEWAY_MAX_BODY_BYTES.

        Django's read_body spools any body to a temporary file, however large, and
        reading a chunked one (no content-length) then loads it into memory whole.
        Here a body over the limit is read to its end (the connection stays usable)
        but not kept: the request gets an empty body and is answered 413.
        """
        limit = settings.GATEWAY_MAX_BODY_BYTES
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size > limit:
            return io.BytesIO(), True
        return io.BytesIO(b"".join(chunks)), False

    async def _cancel_on_disconnect(self, receive, task: asyncio.Task) -> None:
        """Cancel `task` when the client disconnects, and return (see client_left)."""
        with contextlib.suppress(RequestAborted):
            await self.listen_for_disconnect(receive)
        task.cancel()

    async def send_response(self, response, send):
        stream = isinstance(response, EventStream)
        one_chunk = not response.streaming and len(response.content) <= self.chunk_size
        if response.cookies or not (stream or one_chunk):
            return await super().send_response(response, send)
        # Django's own send_response, minus its per-header checks and per-chunk layers
        # (make_bytes, chunking): the gateway's JSON answers are one chunk of bytes, an
        # event stream's body is bytes already, and neither sets cookies.
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response_header_pairs(response),
            }
        )
        if not stream:
            await send({"type": "http.response.body", "body": response.content})
            return
        async with contextlib.aclosing(response.events) as events:
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body"})

    def resolve_request(self, request):
        """Django's URL resolution, from route_match's cache (the URLconf is fixed)."""
        if not hasattr(request, "urlconf"):
            match = route_match(request.path_info)
            if match is not None:
                request.resolver_match = match
                return match
        return super().resolve_request(request)


def client_left(listener: asyncio.Task) -> bool:
    """Whether the disconnect listener saw the client leave: it returns only then (a
    listener cancelled, or failed on an unexpected ASGI message, is not a departure)."""
    return listener.done() and not listener.cancelled() and listener.exception() is None


def _fast_path(path: str) -> bool:
    """API paths, and paths no route serves (a flood of those must stay cheap)."""
    return is_api_path(path) or is_unknown_path(path)
