"""`manage.py drainrequestlogs`: write request-log records left in the Redis outbox.

Gateways drain the outbox themselves (every REQUEST_LOG_DRAIN_SECONDS while they
serve); this picks up what a process left behind when it died. Safe to run while gateways are serving.
"""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Move request-log records from the Redis outbox into the database."

    def handle(self, *args, **options) -> None:
        if not settings.REDIS_URL:
            raise CommandError("REDIS_URL is not set: logs are written to the database directly.")
        self.stdout.write(f"Wrote {asyncio.run(_drain())} request logs.")


async def _drain() -> int:
    from accounts.quota.redis_store import drain
    from accounts.quota.resp import RespClient

    client = RespClient(settings.REDIS_URL)
    try:
        return await drain(client)
    finally:
        await client.close()
