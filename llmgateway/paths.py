"""Which paths are the API's, and the route serving a path: for the ASGI handler, the
middleware, the request log and the metrics alike."""

from __future__ import annotations

import functools

from django.urls import Resolver404, ResolverMatch, resolve

API_PREFIXES = ("/v1/", "/v1", "/generate", "/batch_generate", "/health", "/metrics")
# Paths whose errors stay Django's HTML pages (the admin console).
HTML_PREFIXES = ("/admin", "/static")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


@functools.lru_cache(maxsize=4096)
def route_match(path: str) -> ResolverMatch | None:
    """The root URLconf's match for `path`, or None: cached, as the URLconf is fixed.

    Django resolves every request's path through the nested patterns again; the
    API's handler (llmgateway/handler.py) and the unknown-path check use this instead.
    """
    try:
        return resolve(path)
    except Resolver404:
        return None


def is_unknown_path(path: str) -> bool:
    """A path no route serves, outside the admin's HTML pages: answered with the
    404 envelope directly (see api/middleware.py's admin_middleware)."""
    return not path.startswith(HTML_PREFIXES) and route_match(path) is None
