"""`manage.py drainrequestlogs`: write request logs and settlements left behind.

Gateways write these themselves: the Redis outbox every REQUEST_LOG_DRAIN_SECONDS
while they serve, and their spool (GATEWAY_SPOOL_DIR: what they could not write
while the database or Redis was out) as soon as it is back. This picks up what a
process left when it died or stopped during an outage. Safe to run while
gateways are serving.
"""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Write what gateways left behind: the spool of settlements and request logs kept "
        "through an outage, then the Redis outbox of request logs (with REDIS_URL)."
    )

    def handle(self, *args, **options) -> None:
        replayed, written = asyncio.run(_drain())
        if not replayed:
            self.stderr.write("Some spool files could not be written yet; see the log.")
        if written is not None:
            self.stdout.write(f"Wrote {written} request logs from the Redis outbox.")
        if not replayed:
            raise SystemExit(1)


async def _drain() -> tuple[bool, int | None]:
    from accounts.quota import quota_store
    from accounts.quota.redis_store import drain
    from accounts.quota.resp import RespClient
    from accounts.quota.spool import spool_replay

    store = quota_store()
    replayed = await spool_replay(store.replayer.spool, store.replayer.apply)
    if not settings.REDIS_URL:
        return replayed, None
    client = RespClient(settings.REDIS_URL)
    try:
        return replayed, await drain(client)
    finally:
        await client.close()
