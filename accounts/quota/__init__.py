"""Per-key quotas: requests and tokens per minute, concurrent requests, a token budget.

Every admission reserves the request's worst case (prompt tokens plus the most it
may generate) against tokens-per-minute and the budget, and takes a concurrency
lease; settlement replaces the reservation by the exact usage and ends the lease.
A lease that is never settled (its process died) expires after
QUOTA_LEASE_SECONDS and its reservation is released by the next admission.

Two stores with the same semantics: Redis (REDIS_URL set; shared by every
replica) and the database. Each module says which races it excludes.

Windows: requests and tokens per minute count in fixed windows aligned to the
clock minute. Within a window the limit is exact; across a boundary a client
can get up to twice the limit in a short span (the accepted cost of exact,
O(1) counters). The budget counts per UTC day, UTC month, or in total, and
only while a budget is set (setting one mid-period starts it at zero).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Protocol

from django.conf import settings

if TYPE_CHECKING:
    from accounts.services import KeyRecord

WINDOW_MS = 60_000
UNLIMITED = -1


class Verdict(enum.IntEnum):
    OK = 0
    REQUESTS = 1
    TOKENS = 2
    CONCURRENCY = 3
    BUDGET = 4


@dataclass(slots=True)
class Decision:
    verdict: Verdict
    rpm_used: int  # requests counted in this window, this one included when admitted
    tpm_used: int  # tokens counted or reserved in this window
    budget_used: int
    reset_ms: int  # until the current minute window ends
    lease_id: str | None = None


@dataclass(slots=True)
class Snapshot:
    """A key's counters now: for the admin and for tests."""

    rpm_used: int
    tpm_used: int
    budget_used: int
    leases: int


@dataclass(frozen=True, slots=True)
class Clock:
    """One reading of the clock, in the units each counter needs."""

    now_ms: int

    @classmethod
    def read(cls) -> Clock:
        return cls(int(time.time() * 1000))

    @property
    def minute(self) -> int:
        return self.now_ms // WINDOW_MS

    @property
    def reset_ms(self) -> int:
        return (self.minute + 1) * WINDOW_MS - self.now_ms

    def budget_window(self, period: str) -> tuple[str, int]:
        """The budget period's label and how long its counter must be kept (0: forever)."""
        moment = datetime.fromtimestamp(self.now_ms / 1000, UTC)
        if period == "day":
            return moment.strftime("%Y-%m-%d"), 2 * 86_400
        if period == "month":
            return moment.strftime("%Y-%m"), 32 * 86_400
        return "total", 0


def limit_arg(value: int | None) -> int:
    return UNLIMITED if value is None else value


def lease_seconds() -> float:
    return float(settings.QUOTA_LEASE_SECONDS)


class QuotaStore(Protocol):
    async def reserve(self, key: KeyRecord, tokens: int) -> Decision:
        """Admit or refuse atomically; when admitted, hold `tokens` under a new lease."""
        ...

    async def settle(self, key: KeyRecord, lease_id: str | None, tokens: int, log: dict) -> None:
        """Charge `tokens` instead of the lease's reservation and write the log record."""
        ...

    async def log(self, record: dict) -> None:
        """Write a log record for a request that was never admitted."""
        ...

    async def snapshot(self, key: KeyRecord) -> Snapshot:
        """The key's counters in the current windows (expired leases not yet released)."""
        ...


@cache
def _store_for(redis_url: str) -> QuotaStore:
    if redis_url:
        from accounts.quota.redis_store import RedisStore

        return RedisStore(redis_url)
    from accounts.quota.database import DatabaseStore

    return DatabaseStore()


def quota_store() -> QuotaStore:
    return _store_for(settings.REDIS_URL)
