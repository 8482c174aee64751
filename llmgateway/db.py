"""Database access from async code on the API path.

The API's ASGI handler skips Django's request signals (see handler.py), so the
ORM thread's connections are never checked between requests by them. Every
ORM call from async code goes through `orm()`, which first closes connections
that are too old or broken, exactly what the request signals would have done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

P = ParamSpec("P")
R = TypeVar("R")


def orm(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap a sync ORM function for `await`, with connection hygiene first."""

    def fresh(*args: P.args, **kwargs: P.kwargs) -> R:
        close_old_connections()
        return fn(*args, **kwargs)

    return sync_to_async(fresh, thread_sensitive=True)
