"""Work that outlives its request: settlements, request-log writes, last-used stamps.

A response does not wait for its settlement (a Redis script or a database
transaction): the client has its answer one round trip sooner. Spawned tasks
stay referenced until they finish (the event loop keeps only weak references),
and the ASGI lifespan's shutdown waits for them (handler.py), so a graceful
stop loses no settlement or log row. A process killed outright loses at most
the settlements in flight; their leases expire (QUOTA_LEASE_SECONDS).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

_tasks: set[asyncio.Future] = set()
_shutdown_hooks: list[Callable[[], None]] = []


def spawn(awaitable: Awaitable[object]) -> asyncio.Future:
    """Run `awaitable` on the current loop, independently of the caller's task."""
    task = asyncio.ensure_future(awaitable)
    _tasks.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Future) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task failed", exc_info=task.exception())


def at_shutdown(hook: Callable[[], None]) -> None:
    """Call `hook` when the server shuts down, before waiting for background tasks
    (e.g. to start a deferred flush now rather than after its delay)."""
    _shutdown_hooks.append(hook)


async def shutdown(seconds: float) -> bool:
    """Run the shutdown hooks, then wait up to `seconds` for background tasks."""
    for hook in _shutdown_hooks:
        try:
            hook()
        except Exception:
            logger.exception("shutdown hook %r failed", hook)
    return await wait_all(seconds)


async def wait_all(seconds: float) -> bool:
    """Wait until no background task is left (tasks may spawn more); False on timeout."""
    deadline = time.monotonic() + seconds
    while _tasks:
        left = deadline - time.monotonic()
        if left <= 0:
            logger.warning("shutting down with %d background tasks unfinished", len(_tasks))
            return False
        await asyncio.wait(set(_tasks), timeout=left)
    return True
