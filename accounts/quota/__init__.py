"""Quotas: requests and tokens per minute, concurrent requests, token and money budgets.

A request is admitted against every quota *subject* that applies to it: its key,
the key's limits for the requested model, the key's project, and the project's
limits for the model (`Subject`, `QuotaPlan`). Admission over all of them is one
atomic step in each store (one Lua script in Redis, one transaction in the
database): either every subject admits and all are charged, or none is.

Every admission reserves the request's worst case (prompt tokens plus the most it
may generate) against tokens-per-minute and the budget, and takes a concurrency
lease; settlement replaces the reservation by the exact usage and ends the lease.
A lease that is never settled (its process died) expires after
QUOTA_LEASE_SECONDS and its reservation is released by the next admission.

Two stores with the same semantics: Redis (REDIS_URL set; shared by every
replica) and the database. Each module says which races it excludes.

Windows: requests and tokens per minute count in one-second buckets, and an
admission counts the current second's bucket and the 60 before it. Any 60-second
span ending now lies inside those buckets, so no 60 seconds ever see more than
the limit: not within a minute, and not across a minute's boundary either (fixed
clock-minute windows let twice the limit through there). The price is being up to
one second conservative, and at most 61 small counters per key. A bucket stops
counting 61 s after it began. The budget counts per UTC day, UTC month, or in
total, and only while a budget is set (setting one mid-period starts it at zero).
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Protocol

from django.conf import settings

from accounts.subjects import QuotaPlan, Subject

__all__ = ["QuotaPlan", "Subject"]  # re-exported: they belong to quotas' vocabulary

if TYPE_CHECKING:
    from accounts.services import KeyRecord

BUCKET_MS = 1000
# Buckets before the current one that still count: a window of 60 to 61 seconds.
WINDOW_BUCKETS = 60
UNLIMITED = -1


class Verdict(enum.IntEnum):
    OK = 0
    REQUESTS = 1
    TOKENS = 2
    CONCURRENCY = 3
    BUDGET = 4
    MONEY = 5  # a money budget (llmgateway.accounting: integer money units)


@dataclass(frozen=True, slots=True)
class Used:
    """One subject's counters as an admission found them (its own charge included)."""

    rpm: int
    tpm: int
    budget: int
    money: int
    reset_ms: int


@dataclass(slots=True)
class Decision:
    verdict: Verdict
    rpm_used: int  # requests counted in this window, this one included when admitted
    tpm_used: int  # tokens counted or reserved in this window
    budget_used: int
    # Until the rpm/tpm windows hold nothing of what is counted now (OpenAI's
    # x-ratelimit-reset-*: back to the initial state).
    reset_ms: int
    # For a REQUESTS or TOKENS refusal: until enough has left the window for this
    # request to fit (retry-after).
    retry_ms: int = 0
    lease_id: str | None = None
    money_used: int = 0
    # The subjects admitted against and each one's counters; the counters above are
    # those of `subject`: the one that refused, or the first (the key) when admitted.
    subjects: tuple[Subject, ...] = ()
    used: tuple[Used, ...] = ()
    subject: Subject | None = None

    @classmethod
    def of(
        cls,
        verdict: Verdict,
        subjects: tuple[Subject, ...],
        used: list[Used],
        who: int,
        retry_ms: int,
        lease_id: str | None,
    ) -> Decision:
        """`who`: the index of the refusing subject (0 when admitted)."""
        mine = used[who] if used else Used(0, 0, 0, 0, 0)
        return cls(
            verdict,
            mine.rpm,
            mine.tpm,
            mine.budget,
            max((u.reset_ms for u in used), default=0),
            retry_ms,
            lease_id if verdict is Verdict.OK else None,
            mine.money,
            subjects,
            tuple(used),
            subjects[who] if subjects else None,
        )


@dataclass(slots=True)
class Snapshot:
    """A subject's counters now: for the admin and for tests."""

    rpm_used: int
    tpm_used: int
    budget_used: int
    leases: int
    money_used: int = 0
    # As a Decision has them (its reset_ms, and retry_ms for one more request or token).
    reset_ms: int = 0
    rpm_retry_ms: int = 0
    tpm_retry_ms: int = 0


def snapshot_of(
    subject: Subject, rpm: Window, tpm: Window, budget_used: int, leases: int, money_used: int
) -> Snapshot:
    return Snapshot(
        rpm_used=rpm.used,
        tpm_used=tpm.used,
        budget_used=budget_used,
        leases=leases,
        money_used=money_used,
        reset_ms=max(rpm.reset_ms(), tpm.reset_ms()),
        rpm_retry_ms=rpm.fits_in_ms(1, subject.rpm_limit) if subject.rpm_limit is not None else 0,
        tpm_retry_ms=tpm.fits_in_ms(1, subject.tpm_limit) if subject.tpm_limit is not None else 0,
    )


@dataclass(frozen=True, slots=True)
class Clock:
    """One reading of the clock, in the units each counter needs."""

    now_ms: int

    @classmethod
    def read(cls) -> Clock:
        return cls(int(time.time() * 1000))

    @property
    def bucket(self) -> int:
        """The current one-second bucket (epoch seconds)."""
        return self.now_ms // BUCKET_MS

    @property
    def oldest_bucket(self) -> int:
        """The oldest bucket that still counts."""
        return self.bucket - WINDOW_BUCKETS

    def leaves_ms(self, bucket: int) -> int:
        """Milliseconds until `bucket` stops counting."""
        return (bucket + WINDOW_BUCKETS + 1) * BUCKET_MS - self.now_ms

    def budget_window(self, period: str) -> tuple[str, int]:
        """The budget period's label and how long its counter must be kept (0: forever)."""
        return _budget_window(period, self.now_ms // 1000)


@lru_cache(maxsize=8)
def _budget_window(period: str, second: int) -> tuple[str, int]:
    """Clock.budget_window, made once per period and second (four calls per subject and
    request would each format a date)."""
    moment = datetime.fromtimestamp(second, UTC)
    if period == "day":
        return moment.strftime("%Y-%m-%d"), 2 * 86_400
    if period == "month":
        return moment.strftime("%Y-%m"), 32 * 86_400
    return "total", 0


class Window:
    """The database store's sliding window: bucket (epoch second) → count, as the
    Redis script keeps it in a hash. Both stores follow the same rules."""

    def __init__(self, buckets: dict[str, int] | None, clock: Clock) -> None:
        oldest = clock.oldest_bucket
        self.clock = clock
        self.buckets = {int(b): n for b, n in (buckets or {}).items() if int(b) >= oldest}

    @property
    def used(self) -> int:
        return sum(self.buckets.values())

    def add(self, amount: int, bucket: int | None = None) -> None:
        bucket = self.clock.bucket if bucket is None else bucket
        self.buckets[bucket] = self.buckets.get(bucket, 0) + amount

    def adjust(self, bucket: int, amount: int) -> None:
        """Change a bucket that is still counted (an older one no longer matters)."""
        if bucket in self.buckets:
            self.buckets[bucket] += amount

    def stored(self) -> dict[str, int]:
        return {str(b): n for b, n in self.buckets.items() if n}

    def reset_ms(self) -> int:
        live = [b for b, n in self.buckets.items() if n > 0]
        return self.clock.leaves_ms(max(live)) if live else 0

    def fits_in_ms(self, need: int, limit: int) -> int:
        """Until `need` more fits under `limit`, as the oldest buckets leave."""
        used = self.used
        if used + need <= limit:
            return 0
        for bucket in sorted(self.buckets):
            used -= self.buckets[bucket]
            if used + need <= limit:
                return self.clock.leaves_ms(bucket)
        return self.reset_ms()


def limit_arg(value: int | None) -> int:
    return UNLIMITED if value is None else value


def lease_seconds() -> float:
    return float(settings.QUOTA_LEASE_SECONDS)


class QuotaStore(Protocol):
    async def reserve(
        self,
        key: KeyRecord,
        tokens: int,
        *,
        subjects: tuple[Subject, ...] | None = None,
        cost: int = 0,
    ) -> Decision:
        """Admit or refuse atomically over every subject (default: the key's subjects for
        no particular model); when admitted, hold `tokens` and `cost` (money units) on
        each under a new lease."""
        ...

    def reserve_soon(
        self,
        key: KeyRecord,
        tokens: int,
        *,
        subjects: tuple[Subject, ...] | None = None,
        cost: int = 0,
    ) -> asyncio.Future | None:
        """`reserve`'s decision as a future already under way, without a task (the
        request path's admission), or None where the store cannot: then call `reserve`."""
        ...

    async def settle(
        self,
        key: KeyRecord,
        lease_id: str | None,
        tokens: int,
        log: dict | None,
        *,
        subjects: tuple[Subject, ...] | None = None,
        cost: int = 0,
    ) -> None:
        """Charge `tokens` instead of the lease's reservation and write the log record.

        Never loses either: what the store cannot write now (the database or Redis
        out) is spooled (spool.py) and applied once, when the store is back.
        """
        ...

    def settle_now(
        self,
        key: KeyRecord,
        lease_id: str | None,
        tokens: int,
        log: dict | None,
        *,
        subjects: tuple[Subject, ...] | None = None,
        cost: int = 0,
    ) -> bool:
        """`settle` done without a suspension (no task, nothing awaited), where the store
        can: True once it is on its way, with `settle`'s guarantees; False, with
        nothing done, where it cannot: then call `settle`."""
        ...

    async def log(self, record: dict) -> None:
        """Write a log record for a request that was never admitted (spooled likewise)."""
        ...

    async def snapshot(self, key: KeyRecord, subject: Subject | None = None) -> Snapshot:
        """A subject's counters in the current windows (expired leases not yet released);
        the key's own by default."""
        ...


async def redis_ping() -> bool:
    """Whether the Redis store answers (True when quotas live in the database)."""
    store = quota_store()
    ping = getattr(store, "ping", None)
    return await ping() if ping is not None else True


@cache
def _store_for(redis_url: str) -> QuotaStore:
    if redis_url:
        from accounts.quota.redis_store import RedisStore

        return RedisStore(redis_url)
    from accounts.quota.database import DatabaseStore

    return DatabaseStore()


def quota_store() -> QuotaStore:
    return _store_for(settings.REDIS_URL)
