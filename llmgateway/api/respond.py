"""The edge's half of every generating route: hand the endpoint to the runner, and send
its answer as JSON or as server-sent events."""

from __future__ import annotations

import orjson
from django.http import HttpRequest, HttpResponse

from llmgateway.api.sse import sse_response
from llmgateway.compat import response_headers_set, response_on_close
from llmgateway.runner.endpoint import Endpoint
from llmgateway.runner.lifecycle import run


async def respond(request: HttpRequest, endpoint: Endpoint) -> HttpResponse:
    """Serve `endpoint`'s request for the caller authentication found (Ninja keeps it
    as `request.auth`; none with the platform off)."""
    answer = await run(request, caller=getattr(request, "auth", None), endpoint=endpoint)
    if answer.events is not None:
        response = sse_response(answer.events)
        response_on_close(response, answer.on_close)
    else:
        response = json_response(answer.body)
    response_headers_set(response, answer.headers)
    return response


def json_response(body: object) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), content_type="application/json")
