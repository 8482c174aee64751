"""The API's middleware: request ids, HTTP's HEAD and OPTIONS, CORS, the body-size
limit, and keeping the per-request path free of Django's session/auth/CSRF middleware.

Django's stock middleware are sync-first: under ASGI each one costs two thread
hops per request. The API authenticates with bearer keys and needs none of
them, so they wrap only the admin (and other non-API) paths, via
`admin_middleware`, which builds that inner chain once at start-up.
"""

from __future__ import annotations

import secrets

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers
from django.utils.module_loading import import_string

from llmgateway import metrics
from llmgateway.api.access import access_log
from llmgateway.api.errors import method_not_allowed_response, not_found_response
from llmgateway.context import RequestContext, current_request, request_context
from llmgateway.errors import too_large
from llmgateway.paths import HTML_PREFIXES, is_api_path, is_unknown_path

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_META = "HTTP_X_REQUEST_ID"
MAX_CLIENT_REQUEST_ID = 200


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def _request_id(request: HttpRequest) -> str:
    # META, not request.headers: that builds a dict of every header on first use.
    given = request.META.get(REQUEST_ID_META, "")
    if given and len(given) <= MAX_CLIENT_REQUEST_ID and given.isprintable():
        return given
    return new_request_id()


def context_begin(request: HttpRequest, *, body_too_large: bool = False) -> RequestContext:
    """Give `request` its context (`request.gateway`, and `current_request` for log
    lines): its id (the client's x-request-id when usable), its route, when it started,
    and whether its body was over the limit."""
    context = RequestContext(
        _request_id(request), body_too_large=body_too_large, route=metrics.route_of(request.path)
    )
    request.gateway = context
    current_request.set(context)
    return context


def _too_large(request: HttpRequest) -> bool:
    if request_context(request).body_too_large:
        return True
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) > settings.GATEWAY_MAX_BODY_BYTES
    except ValueError:
        return False


# What a browser script may read of a response: what OpenAI's SDKs read.
CORS_EXPOSED_HEADERS = ", ".join(
    (
        REQUEST_ID_HEADER,
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
    )
)
# How long a browser may reuse a preflight's answer (Chromium caps it at two hours).
PREFLIGHT_MAX_AGE = "7200"


def _cors_origin(request: HttpRequest) -> str | None:
    """The Access-Control-Allow-Origin for this request, or None (no Origin, or not allowed)."""
    origin = request.META.get("HTTP_ORIGIN")
    if not origin:
        return None
    allowed = settings.CORS_ALLOWED_ORIGINS
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


def _options_response(allow: str) -> HttpResponse:
    """OPTIONS on an API path: 204 naming the path's methods (Ninja answered 405)."""
    methods = [m.strip() for m in allow.split(",") if m.strip()]
    if "GET" in methods:
        methods.append("HEAD")
    methods.append("OPTIONS")
    response = HttpResponse(status=204)
    del response["content-type"]  # no body, so no type (Django sets text/html)
    response["allow"] = ", ".join(methods)
    return response


def _cors(request: HttpRequest, response: HttpResponse, origin: str) -> None:
    response["access-control-allow-origin"] = origin
    if origin != "*":
        patch_vary_headers(response, ("origin",))
    if request.method != "OPTIONS":
        response["access-control-expose-headers"] = CORS_EXPOSED_HEADERS
        return
    # A preflight: the browser asks whether it may send the real request.
    response["access-control-allow-methods"] = response.get("allow", "")
    asked = request.META.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS")
    if asked:
        # Any header: the SDKs send their own (x-stainless-*, openai-*), and a key is
        # needed anyway for anything but /health.
        response["access-control-allow-headers"] = asked
    response["access-control-max-age"] = PREFLIGHT_MAX_AGE


def _finish(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    if (
        request.method == "OPTIONS"
        and response.status_code == 405
        and is_api_path(request.path)
        and response.has_header("allow")
    ):
        response = _options_response(response["allow"])
    if (
        response.status_code in (404, 405)
        and not request.path.startswith(HTML_PREFIXES)
        and not response.get("content-type", "").startswith("application/json")
    ):
        # Django's and Ninja's own 404/405 are HTML or empty: API clients get the envelope.
        if response.status_code == 404:
            response = not_found_response(request)
        else:
            allow = response.get("allow")
            response = method_not_allowed_response(request)
            if allow:
                response["allow"] = allow
    response[REQUEST_ID_HEADER] = request_context(request).request_id
    if request.path.startswith(HTML_PREFIXES):
        return response
    origin = _cors_origin(request)
    if origin is not None:
        _cors(request, response, origin)
    return response


class _Middleware:
    """Sync- and async-capable middleware with two hooks: `before` may answer early,
    `after` may replace the response. Sync under a WSGI server (llmgateway/wsgi.py), async
    under uvicorn (serve, runserver)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        early = self.before(request)
        return self.after(request, early if early is not None else self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        early = self.before(request)
        if early is None:
            early = await self.get_response(request)
        return self.after(request, early)


class request_id_middleware(_Middleware):  # noqa: N801 - named like a function in settings
    """Every response, errors included, carries x-request-id (the client's if given).

    Also HTTP's semantics at the API's edge: HEAD is served as GET (the server sends
    no body), OPTIONS answers 204 with the path's methods, and responses to a browser
    from an allowed origin (settings.CORS_ALLOWED_ORIGINS) carry CORS headers, error
    responses included, so a script can read OpenAI's error envelope.
    """

    def before(self, request: HttpRequest) -> None:
        if not hasattr(request, "gateway"):  # the ASGI handler makes it on the API's paths
            # Restored in after(): a WSGI thread (or a test's client) serves the next
            # request, and logs between the two, with the same context variables.
            request._previous_context = current_request.get()
            context_begin(request)
        if request.method == "HEAD" and is_api_path(request.path):
            request.method = "GET"

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response = _finish(request, response)
        metrics.http_answered(request, response)
        # The API's handler logs its requests once their response is sent (a stream's
        # tokens are known then); the admin's and a WSGI server's are logged here.
        if hasattr(request, "_previous_context"):
            access_log(request, response.status_code)
            current_request.set(request._previous_context)
        return response


class body_limit_middleware(_Middleware):  # noqa: N801
    """413 for a body declared over GATEWAY_MAX_BODY_BYTES, or received over it
    without a declared length (chunked; the ASGI handler kept none of it).

    Runs after the request-log middleware, so a refused upload still gets its row.
    """

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return too_large().response() if _too_large(request) else None


class admin_middleware:  # noqa: N801
    """Runs settings.ADMIN_MIDDLEWARE around everything that is not an API path.

    A path that matches no route (outside the admin's pages, whose 404s stay
    Django's HTML) is answered here with the 404 envelope:
    left to Django, its Resolver404 is turned into a response through
    sync_to_async (two thread hops, ~10 ms of CPU per request on a small VM),
    which would make a flood of unknown paths the cheapest way to load a gateway.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        chain = get_response
        for path in reversed(settings.ADMIN_MIDDLEWARE):
            chain = import_string(path)(chain)
        self.chain = chain
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        if is_unknown_path(request.path_info):
            return not_found_response(request)
        if is_api_path(request.path):
            return self.get_response(request)
        return self.chain(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if is_unknown_path(request.path_info):
            return not_found_response(request)
        if is_api_path(request.path):
            return await self.get_response(request)
        return await self.chain(request)
