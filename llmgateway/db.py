"""Database access from async code on the API path: fresh connections, a time bound,
and a quick answer while the database is out.

The API's ASGI handler skips Django's request signals (see handler.py), so the
ORM thread's connections are never checked between requests by them. Every
ORM call from async code goes through `orm()`, which first closes connections
that are too old or broken, exactly what the request signals would have done.

A database that refuses connections, or stops answering, must cost a request a
503 within a known time, never a 500 or a hang (llmgateway/api/errors.py maps
`DatabaseUnavailable` and Django's other database errors to 503):

- on PostgreSQL every call has a bound: DATABASE_CONNECT_TIMEOUT plus
  DATABASE_STATEMENT_TIMEOUT. The server enforces the statement timeout
  itself; the gateway's own bound covers a server, or a network path, that
  stops answering altogether, where no server-side timeout can reach us;
- the ORM's calls share one thread (sync_to_async's thread-sensitive mode).
  A call past its bound has its connection's socket shut down from the event
  loop's side, so the blocked read returns at once and the thread is free;
  psycopg then reports the connection closed and Django drops it;
- once a call finds the database out of reach (a failed connect, a broken
  connection, a call past its bound), `outage` makes every call fail at once
  for RETRY_SECONDS, and then lets one call through to try again (a probe)
  while the others still fail at once. Queued calls do not each wait out a
  connect timeout, and a request never waits longer than one bound.

SQLite is a local file: nothing to reach, so no bound (it waits for its lock
as settings.SQLITE_OPTIONS say) and no outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
)
from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# After the database was found out of reach, how long calls fail at once before
# one of them tries again.
RETRY_SECONDS = 1.0
# What a 503 for an unavailable database tells clients to wait, in seconds.
RETRY_AFTER = 1


class DatabaseUnavailable(OperationalError):
    """The database cannot be reached, or did not answer within the bound.

    `attempted` is False when the call never reached the database (it was known
    to be out): such a call certainly changed nothing. When True, the call may
    or may not have been applied.
    """

    def __init__(self, message: str, *, attempted: bool) -> None:
        super().__init__(message)
        self.attempted = attempted


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database is out (not that one statement was wrong):
    callers keep what they meant to write and write it when it returns."""
    return isinstance(exc, OperationalError | InterfaceError)


class _Call:
    """One ORM call's identity, for the outage state and the watchdog."""

    __slots__ = ()


class Outage:
    """Whether this process found the database out of reach, shared by every call."""

    def __init__(self) -> None:
        self.down = False
        self._retry_at = 0.0
        self._probe: _Call | None = None
        self._lock = threading.Lock()

    def admit(self, call: _Call) -> bool:
        """Whether `call` may try the database now (always, unless it is out)."""
        if not self.down:
            return True
        with self._lock:
            if not self.down or call is self._probe:
                return True
            if self._probe is None and time.monotonic() >= self._retry_at:
                self._probe = call
                return True
            return False

    def failed(self, call: _Call) -> None:
        with self._lock:
            if not self.down:
                logger.error("the database is out of reach; answering 503 until it returns")
            self.down = True
            self._retry_at = time.monotonic() + RETRY_SECONDS
            if self._probe is None or self._probe is call:
                self._probe = None

    def succeeded(self, call: _Call) -> None:
        if not self.down:
            return
        with self._lock:
            if self.down:
                logger.warning("the database is reachable again")
            self.down = False
            self._probe = None


outage = Outage()


class _Running:
    """The call the ORM thread is running, so the watchdog can end a hung one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.call: _Call | None = None
        self.wrapper: BaseDatabaseWrapper | None = None

    def start(self, call: _Call, wrapper: BaseDatabaseWrapper) -> None:
        with self.lock:
            self.call, self.wrapper = call, wrapper

    def end(self, call: _Call) -> None:
        with self.lock:
            if self.call is call:
                self.call = self.wrapper = None

    def interrupt(self, call: _Call) -> None:
        """Shut down the socket of `call`'s connection if it is still running.

        shutdown() wakes a thread blocked reading or writing that socket, and
        acts on the socket itself, so it is done on a duplicate of the
        descriptor taken under the lock: the ORM thread cannot close the
        connection (and the number be reused) while the lock is held.
        """
        with self.lock:
            if self.call is not call or self.wrapper is None:
                return
            raw = self.wrapper.connection
            try:
                descriptor = os.dup(raw.pgconn.socket)
            except Exception:  # not connected yet (its connect timeout ends it), or closed
                return
        with socket.socket(fileno=descriptor) as sock, contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


_running = _Running()


def call_bound() -> float | None:
    """Seconds one call may take before the database counts as out (None: no bound)."""
    if not settings.DATABASES[DEFAULT_DB_ALIAS]["ENGINE"].endswith("postgresql"):
        return None
    return float(settings.DATABASE_CONNECT_TIMEOUT + settings.DATABASE_STATEMENT_TIMEOUT)


def _connection_lost(wrapper: BaseDatabaseWrapper) -> bool:
    raw = wrapper.connection
    return raw is None or bool(getattr(raw, "broken", False) or getattr(raw, "closed", False))


def _unavailable() -> DatabaseUnavailable:
    return DatabaseUnavailable("The database is unavailable.", attempted=False)


def orm(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Wrap a sync ORM function for `await`: connection hygiene first, a time bound,
    and DatabaseUnavailable at once while the database is known to be out."""

    def in_thread(call: _Call, *args: P.args, **kwargs: P.kwargs) -> R:
        if not outage.admit(call):  # queued before the outage was seen
            raise _unavailable()
        wrapper = connections[DEFAULT_DB_ALIAS]
        _running.start(call, wrapper)
        try:
            close_old_connections()
            result = fn(*args, **kwargs)
        except DatabaseError as exc:
            if database_unreachable(exc) and _connection_lost(wrapper):
                outage.failed(call)
            raise
        finally:
            _running.end(call)
        outage.succeeded(call)
        return result

    threaded = sync_to_async(in_thread, thread_sensitive=True)

    @functools.wraps(fn)
    async def bounded(*args: P.args, **kwargs: P.kwargs) -> R:
        call = _Call()
        if not outage.admit(call):
            raise _unavailable()
        bound = call_bound()
        if bound is None:
            return await threaded(call, *args, **kwargs)
        deadline = asyncio.timeout(bound)
        try:
            async with deadline:
                return await threaded(call, *args, **kwargs)
        except TimeoutError:
            if not deadline.expired():
                raise
        outage.failed(call)
        _running.interrupt(call)
        raise DatabaseUnavailable(
            f"The database did not answer within {bound:g} s.", attempted=True
        )

    return bounded


def server_timeouts() -> None:
    """Give the web server's PostgreSQL sessions their statement and idle timeouts.

    Called by the ASGI entry point before any connection opens. Management
    commands (migrate, prunerequestlogs) keep no statement timeout: their
    statements may rightly run long.
    """
    database = settings.DATABASES[DEFAULT_DB_ALIAS]
    if not database["ENGINE"].endswith("postgresql"):
        return
    options = database.setdefault("OPTIONS", {})
    limits = (
        f"-c statement_timeout={int(settings.DATABASE_STATEMENT_TIMEOUT * 1000)} "
        f"-c idle_in_transaction_session_timeout={int(settings.DATABASE_IDLE_TIMEOUT * 1000)}"
    )
    options["options"] = f"{options.get('options', '')} {limits}".strip()
