"""Per-process caches of database rows read on the request path (model configs,
API keys), reloaded ahead of the requests that need them.

A cached value is served for `ttl()` seconds from when its load began, so a
change in the database reaches every process within that time. Within that:

- once an entry is past REFRESH_AHEAD of its ttl, the request that finds it is
  answered from the cache and one reload starts beside it: under steady traffic
  no request waits for the database (a load is an ORM thread hop and a query,
  1-2 ms, which every request after an expiry used to pay);
- a request that finds no entry, or an expired one, waits for the load, and
  requests that arrive meanwhile wait for that same load: when a popular entry
  expires, the ORM thread runs one query, not one per waiting request.

A failed load raises to the requests waiting for it and is logged; a failed
reload ahead leaves the entry to expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

V = TypeVar("V")

# The share of the ttl after which a request triggers a reload ahead of expiry:
# an entry in steady use is read 1/REFRESH_AHEAD times per ttl, not once.
REFRESH_AHEAD = 0.75


class RowCache(Generic[V]):
    def __init__(
        self,
        load: Callable[..., Awaitable[V]],
        *,
        ttl: Callable[[], float],
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, V]] = {}
        self._loading: dict[Hashable, asyncio.Future[V]] = {}
        self._cleared = float("-inf")

    def clear(self) -> None:
        """Forget every entry now; a load already in flight is not stored either (it may
        have read the rows before the change that made this clear necessary)."""
        self._entries.clear()
        self._cleared = self._clock()

    async def get(self, key: Hashable, *args: Any) -> V:
        """The value for `key`, loaded (when it must be) by `load(*args)`."""
        entry = self._entries.get(key)
        if entry is not None:
            ttl = self._ttl()
            age = self._clock() - entry[0]
            if age < ttl:
                if age >= ttl * REFRESH_AHEAD and self._loading_here(key) is None:
                    self._start(key, args)
                return entry[1]
        loading = self._loading_here(key) or self._start(key, args)
        # Shielded: a request that leaves does not cancel the load others wait for.
        return await asyncio.shield(loading)

    def _loading_here(self, key: Hashable) -> asyncio.Future[V] | None:
        """The load of `key` in flight on this thread's event loop, if any.

        Under WSGI (runserver) each request runs its own event loop, in its own
        thread: a load on another loop cannot be awaited here.
        """
        loading = self._loading.get(key)
        if loading is None or loading.get_loop() is not asyncio.get_running_loop():
            return None
        return loading

    def _start(self, key: Hashable, args: tuple[Any, ...]) -> asyncio.Future[V]:
        started = self._clock()

        async def load() -> V:
            try:
                value = await self._load(*args)
            except Exception:
                logger.warning("loading %r failed", key, exc_info=True)
                raise
            finally:
                if self._loading.get(key) is future:
                    del self._loading[key]
            if len(self._entries) >= self._max_entries and key not in self._entries:
                self._entries.clear()
            current = self._entries.get(key)
            if started < self._cleared:
                return value  # read before a clear(): serve it to its waiters, keep nothing
            if current is None or current[0] <= started:  # never replace a newer load
                self._entries[key] = (started, value)
            return value

        future = asyncio.ensure_future(load())
        # A reload ahead has no one waiting: its failure is logged above, not again.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._loading[key] = future
        return future
