"""What the gateway keeps about one request while it is served: `request.gateway`.

It is the one attribute the gateway sets on Django's request. The ASGI handler (or,
on other paths, the first middleware) makes it; the request log, the metrics and the
edge read it. Who is calling is not here: authentication's `Caller` (accounts) is
passed to the runner as a value; only the key's public id is noted, for log lines.

It is also the context variable `current_request`, so that a log line emitted anywhere
while the request is served (in its task, the tasks it spawns, the threads its ORM
calls run in) carries the request's id, key, model and route (llmgateway/logconfig.py).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.http import HttpRequest

    from llmgateway.accounting import Admission


@dataclass(slots=True)
class RequestContext:
    request_id: str
    # When the gateway first saw the request: time.monotonic() and time.time().
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    # The ASGI handler received a body over GATEWAY_MAX_BODY_BYTES (a chunked one, kept
    # nowhere): the body-limit middleware answers 413.
    body_too_large: bool = False
    # Set by the platform once a settlement owns the request's log row (it was admitted,
    # or its client left while it was being admitted); the log middleware writes the row
    # of every request that has none.
    admission: Admission | None = None
    # For log lines and the access line: the URLconf pattern serving the request, the
    # key's public id once authenticated, the model asked for.
    route: str = ""
    key: str | None = None
    model: str | None = None
    # Filled in when its generation settles (the access line reports them).
    time_to_first_token: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_type: str | None = None


# The request being served by this task (or thread); None outside any request.
current_request: ContextVar[RequestContext | None] = ContextVar("current_request", default=None)


def request_context(request: HttpRequest) -> RequestContext:
    """The request's context (the first middleware has made it)."""
    return request.gateway
