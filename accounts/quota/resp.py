"""A small pipelined Redis client for the quota scripts on the request path.

Why not redis-py's asyncio client here: measured on this project's VM, one
EVALSHA through it costs ~0.2 ms of CPU (its connection pool's locks, retry
wrapper, command packing and parsing in Python), and every admitted request
makes two (admit, settle). The same call over this client costs ~0.05 ms:
hiredis (the C RESP parser redis-py itself uses when installed) parses replies,
and commands go out on one connection per event loop, pipelined, replies
matched in order; the commands of one turn of the event loop leave in one write
(under load, every admission of that turn: one syscall instead of one each).
redis-py stays for everything off the request path (tests,
the admin's snapshots through `RedisStore.snapshot`, management commands).

One connection carries every request's commands in the order they were
issued, so a settlement issued before a later admission is applied before it
by Redis. A lost connection fails the commands waiting on it (the caller
answers 503: limits fail closed) and the next call reconnects. Each call has a
timeout, so a Redis that stops answering fails requests instead of hanging them.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

import hiredis
from redis.connection import parse_url

from llmgateway import background

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0


class RedisReplyError(Exception):
    """Redis answered a command with an error (e.g. NOSCRIPT, WRONGTYPE)."""


class RedisConnectionError(ConnectionError):
    """Redis cannot be reached: the command was not sent."""


class RedisNoAnswer(RedisConnectionError):
    """The command was sent but no answer came (connection lost, or the timeout):
    Redis may or may not have run it."""


def _encode(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: hiredis's C packer (str, bytes, int and float arguments),
    a third of the Python loop's time for a script call's ~40 arguments; anything else
    is sent as its str()."""
    try:
        return hiredis.pack_command(args)
    except TypeError:
        return hiredis.pack_command(
            tuple(a if isinstance(a, str | bytes | int | float) else str(a) for a in args)
        )


class _Protocol(asyncio.Protocol):
    """One connection: commands out in order, replies matched to them in order.

    A reply that does not come within `timeout` of its command closes the connection
    and fails every command waiting on it (their replies can no longer be matched).
    One timer per connection watches the oldest command, instead of one per call."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.deadlines: collections.deque[float] = collections.deque()  # one per waiting
        self.timeout = timeout
        self.watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        # Commands sent during this turn of the event loop, written together at its end
        # (one socket write for every request admitted in the same turn).
        self.pending: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            self.deadlines.popleft()
            if future.done():  # its caller timed out or was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = RedisNoAnswer(f"connection to Redis lost: {exc or 'closed'}")
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        self.pending.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.deadlines.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def _watch(self) -> None:
        """The watchdog: the oldest command waits past its deadline, or look again then."""
        self.watchdog = None
        if not self.waiting or self.lost is not None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadlines[0]:
            self.watchdog = loop.call_at(self.deadlines[0], self._watch)
            return
        self.lost = RedisNoAnswer(f"Redis did not answer within {self.timeout} s")
        self.transport.close()
        self._fail_waiting()

    def send(self, payload: bytes, *, now: bool = False) -> asyncio.Future:
        """Queue a command and return its reply's future. The command is written at the
        end of this turn of the event loop, with every other command queued in it, or
        at once (with those queued before it, in order) when `now`."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append(future)
        self.deadlines.append(loop.time() + self.timeout)
        if self.watchdog is None:
            self.watchdog = loop.call_at(self.deadlines[0], self._watch)
        if now:
            if self.pending:
                self.pending.append(payload)
                payload = b"".join(self.pending)
                self.pending.clear()
            self.transport.write(payload)
        else:
            if not self.pending:
                loop.call_soon(self.flush)
            self.pending.append(payload)
        return future

    def flush(self) -> None:
        if not self.pending or self.lost is not None:
            return
        payload = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending.clear()
        self.transport.write(payload)


class RespClient:
    """Redis at `url` (redis://, rediss://, unix://; user, password and db honoured).

    `scripts` are loaded (SCRIPT LOAD) on every new connection, so their
    EVALSHA calls do not meet NOSCRIPT after Redis restarts.
    """

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT, scripts: tuple[Script, ...] = ()
    ) -> None:
        self.options = parse_url(url)
        self.tls = url.startswith("rediss://")
        self.timeout = timeout
        self.scripts = scripts
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options

        def made() -> _Protocol:
            return _Protocol(self.timeout)

        # A host that drops packets would otherwise hold admissions for minutes of SYN retries.
        async with asyncio.timeout(self.timeout):
            if "path" in options:
                _, protocol = await loop.create_unix_connection(made, options["path"])
            else:
                _, protocol = await loop.create_connection(
                    made,
                    options.get("host", "localhost"),
                    options.get("port", 6379),
                    ssl=ssl.create_default_context() if self.tls else None,
                )
        setup = []
        if options.get("password"):
            user = options.get("username")
            setup.append(
                ("AUTH", user, options["password"]) if user else ("AUTH", options["password"])
            )
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        setup += [("SCRIPT", "LOAD", script.source) for script in self.scripts]
        for command in setup:
            future = protocol.send(_encode(command))
            try:
                await asyncio.wait_for(future, self.timeout)
            except BaseException:
                protocol.transport.close()
                raise
        return protocol

    async def _live(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            protocol = await asyncio.shield(self._connecting)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (bytes, int, list, None)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._live()
        # No answer within the timeout fails it (RedisNoAnswer): see _Protocol.
        return await protocol.send(_encode(args))

    def send_soon(self, *args: Any) -> asyncio.Future | None:
        """Queue one command (written with the rest of this turn's), without waiting:
        its reply's future, or None if the connection must be (re)opened first."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            return None
        return protocol.send(_encode(args))

    def send_now(self, *args: Any) -> asyncio.Future | None:
        """Write one command now, without waiting: its reply's future, or None if
        the connection must be (re)opened first (then use `call`)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            return None
        return protocol.send(_encode(args), now=True)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


class Script:
    """A Lua script called by SHA (EVALSHA), loaded on first use or after NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: RespClient, *, keys: list, args: list) -> Any:
        try:
            return await client.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await client.call("EVAL", self.source, len(keys), *keys, *args)

    async def issue(
        self,
        client: RespClient,
        *,
        keys: list,
        args: list,
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Send the script and return without waiting for its reply.

        Redis applies one connection's commands in order, so whatever this
        process sends after it (the next admission of the same key) sees its
        effect. A failure known now raises; one that arrives with the reply (by
        then its request has been answered) is logged and passed to `failed`.
        """
        if not self.issue_now(client, keys=keys, args=args, failed=failed):
            await self(client, keys=keys, args=args)

    def issue_now(
        self,
        client: RespClient,
        *,
        keys: list,
        args: list,
        failed: Callable[[BaseException], None] | None = None,
    ) -> bool:
        """`issue` without a suspension: True once the script is written to the open
        connection, False (nothing sent) when the connection must be opened first."""
        future = client.send_now("EVALSHA", self.sha, len(keys), *keys, *args)
        if future is None:
            return False
        future.add_done_callback(lambda done: self._issued(done, client, keys, args, failed))
        return True

    def _issued(
        self,
        future: asyncio.Future,
        client: RespClient,
        keys: list,
        args: list,
        failed: Callable[[BaseException], None] | None,
    ) -> None:
        if future.cancelled() or future.exception() is None:
            return
        exc = future.exception()
        if isinstance(exc, RedisReplyError) and str(exc).startswith("NOSCRIPT"):
            # Someone flushed Redis's script cache while we were connected: run it in full.
            background.spawn(self._eval(client, keys, args, failed))
            return
        logger.error("Redis script %s failed after its request ended: %s", self.sha[:8], exc)
        if failed is not None:
            failed(exc)

    async def _eval(
        self,
        client: RespClient,
        keys: list,
        args: list,
        failed: Callable[[BaseException], None] | None,
    ) -> None:
        try:
            await client.call("EVAL", self.source, len(keys), *keys, *args)
        except (RedisConnectionError, RedisReplyError) as exc:
            logger.error("Redis script %s failed after its request ended: %s", self.sha[:8], exc)
            if failed is not None:
                failed(exc)
