"""Requests refused without a valid key: counted per minute and client address.

A client without a valid key can send requests as fast as its network allows;
a request-log row for each (with its prompt, when content logging is on) would
let it fill the database. Such requests are counted in this process instead and
added to one RefusedRequests row per minute and client address every
FLUSH_SECONDS, by an upsert that adds to the row other processes write too. Their
content is never kept. Counts not yet flushed when a process dies are lost:
they are statistics about refused traffic, not records of served requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from django.db import DatabaseError, connection, transaction

from accounts.models import RefusedRequests
from llmgateway import background
from llmgateway.db import orm

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0
# (minute start in epoch seconds, client address) → [requests, of which 401]
Counts = dict[tuple[int, str], list[int]]


def _upsert(counts: Counts) -> None:
    table = RefusedRequests._meta.db_table
    sql = (
        f"INSERT INTO {table} (minute, client_ip, requests, unauthorized) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (minute, client_ip) DO UPDATE SET "
        f"requests = {table}.requests + excluded.requests, "
        f"unauthorized = {table}.unauthorized + excluded.unauthorized"
    )
    rows = [
        (
            connection.ops.adapt_datetimefield_value(datetime.fromtimestamp(minute, UTC)),
            client_ip,
            requests,
            unauthorized,
        )
        for (minute, client_ip), (requests, unauthorized) in counts.items()
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)


class RefusalCounter:
    def __init__(self) -> None:
        self._counts: Counts = {}
        self._task: asyncio.Future | None = None
        self._now: asyncio.Event | None = None
        background.at_shutdown(self._flush_now)

    def count(self, client_ip: str | None, status: int) -> None:
        """Count one refused request (call on the event loop)."""
        minute = int(time.time()) // 60 * 60
        counted = self._counts.setdefault((minute, client_ip or ""), [0, 0])
        counted[0] += 1
        counted[1] += status == 401
        if self._task is None or self._task.done():
            self._now = asyncio.Event()
            self._task = background.spawn(self._flush_later(self._now))

    def _flush_now(self) -> None:
        if self._now is not None:
            self._now.set()

    async def _flush_later(self, now: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(now.wait(), FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        counts, self._counts = self._counts, {}
        if not counts:
            return
        try:
            await orm(_upsert)(counts)
        except DatabaseError as exc:
            logger.warning("refused-request counts kept for later (%s)", exc)
            for key, (requests, unauthorized) in counts.items():
                counted = self._counts.setdefault(key, [0, 0])
                counted[0] += requests
                counted[1] += unauthorized


refusals = RefusalCounter()
