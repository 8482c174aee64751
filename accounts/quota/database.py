"""Quota counters in the database: the default when REDIS_URL is unset.

Every admission and settlement of a key runs in one transaction whose first
statement locks that key's KeyUsage row: SELECT ... FOR UPDATE on PostgreSQL, an
UPDATE on SQLite (which takes its write lock). The lock comes before anything is
read, so:

- check-then-increment races are excluded: two admissions of one key run one
  after the other, and the second sees the first's increments (no overshoot
  of rpm, tpm, concurrency or budget, across any number of processes);
- no deadlocks: a transaction locks exactly one KeyUsage row, and the
  request-log INSERT takes no lock another transaction waits on (LiteLLM's
  unordered multi-row upserts deadlocked, #27989);
- a settlement and its request-log row commit together or not at all;
- on SQLite the whole database is the lock; a transaction that loses the race
  for it is retried (retry_when_locked).

Keys do not contend with each other. The cost is serialising each key's
admissions (a handful of queries each); Redis is the store for high rates.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from django.db import OperationalError, connection, transaction

from accounts.logs import logs_write
from accounts.models import KeyUsage, QuotaLease
from accounts.quota import Clock, Decision, Snapshot, Verdict, Window, lease_seconds
from accounts.services import KeyRecord
from llmgateway.db import orm

LOCKED_RETRIES = 200


def _now(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.now_ms / 1000, UTC)


def _locked_usage(key_id: int, clock: Clock) -> KeyUsage:
    """Lock and return the key's counters (call inside a transaction).

    PostgreSQL: one SELECT ... FOR UPDATE takes the row lock. SQLite has no row
    locks: a write first takes the database's write lock, so the transaction never
    has to upgrade a read lock later (which fails with SQLITE_BUSY).
    """
    usage = None
    if connection.vendor == "sqlite":
        if KeyUsage.objects.filter(pk=key_id).update(touched_at=_now(clock)):
            usage = KeyUsage.objects.get(pk=key_id)
    else:
        usage = KeyUsage.objects.select_for_update().filter(pk=key_id).first()
    if usage is None:
        # First use of a key created without its row: create it, then lock it.
        KeyUsage.objects.get_or_create(key_id=key_id)
        return _locked_usage(key_id, clock)
    usage.touched_at = _now(clock)
    return usage


class _Counters:
    """A locked KeyUsage row's windows, read and written back as one."""

    def __init__(self, usage: KeyUsage, key: KeyRecord, clock: Clock) -> None:
        self.usage = usage
        self.rpm = Window(usage.rpm_buckets, clock)
        self.tpm = Window(usage.tpm_buckets, clock)
        budget_window, _ = clock.budget_window(key.budget_period)
        if usage.budget_window != budget_window:
            usage.budget_window, usage.budget_used = budget_window, 0

    def release(self, lease: QuotaLease, amount: int) -> None:
        """Take `amount` off the windows `lease` was charged to, where they still count."""
        if lease.tpm_window is not None:
            self.tpm.adjust(lease.tpm_window, -amount)
        if lease.budget_window and lease.budget_window == self.usage.budget_window:
            self.usage.budget_used -= amount

    def save(self) -> None:
        self.usage.rpm_buckets = self.rpm.stored()
        self.usage.tpm_buckets = self.tpm.stored()
        self.usage.save()


def _expire_leases(counters: _Counters, key_id: int, clock: Clock) -> int:
    """Release the key's expired leases; return how many are still live (one SELECT)."""
    now = _now(clock)
    leases = list(QuotaLease.objects.filter(key_id=key_id))
    expired = [lease for lease in leases if lease.expires_at <= now]
    for lease in expired:
        counters.release(lease, lease.reserved)
    if expired:
        QuotaLease.objects.filter(pk__in=[lease.pk for lease in expired]).delete()
    return len(leases) - len(expired)


def _verdict(counters: _Counters, key: KeyRecord, tokens: int, live: int) -> Verdict:
    # The same order as the Redis script: an exhausted budget wins, so the client is
    # told not to retry.
    if key.budget_tokens is not None and counters.usage.budget_used + tokens > key.budget_tokens:
        return Verdict.BUDGET
    if key.rpm_limit is not None and counters.rpm.used + 1 > key.rpm_limit:
        return Verdict.REQUESTS
    if key.tpm_limit is not None and counters.tpm.used + tokens > key.tpm_limit:
        return Verdict.TOKENS
    if key.max_concurrency is not None and live + 1 > key.max_concurrency:
        return Verdict.CONCURRENCY
    return Verdict.OK


def retry_when_locked(function):
    """SQLite only: run again when another writer won a lock upgrade.

    A deferred SQLite transaction that asks for the write lock while another
    connection is committing gets SQLITE_BUSY at once (waiting would deadlock);
    the transaction wrote nothing, so it is simply run again. PostgreSQL waits on
    the row lock instead and never gets here.
    """

    @functools.wraps(function)
    def run(*args, **kwargs):
        for attempt in range(LOCKED_RETRIES):
            try:
                return function(*args, **kwargs)
            except OperationalError as exc:
                if connection.vendor != "sqlite" or "locked" not in str(exc):
                    raise
                if attempt == LOCKED_RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.001, 0.005 * (attempt + 1)))
        raise AssertionError("unreachable")

    return run


@retry_when_locked
def reserve(key: KeyRecord, tokens: int, clock: Clock) -> Decision:
    with transaction.atomic():
        usage = _locked_usage(key.id, clock)
        counters = _Counters(usage, key, clock)
        live = _expire_leases(counters, key.id, clock)
        verdict = _verdict(counters, key, tokens, live)
        lease_id = None
        retry_ms = 0
        if verdict is Verdict.OK:
            lease_id = uuid.uuid4().hex
            counters.rpm.add(1)
            if key.tpm_limit is not None:
                counters.tpm.add(tokens)
            usage.budget_used += tokens if key.budget_tokens is not None else 0
            QuotaLease.objects.create(
                id=lease_id,
                key_id=key.id,
                expires_at=_now(clock) + timedelta(seconds=lease_seconds()),
                reserved=tokens,
                tpm_window=clock.bucket if key.tpm_limit is not None else None,
                budget_window=usage.budget_window if key.budget_tokens is not None else "",
            )
        elif verdict is Verdict.REQUESTS:
            retry_ms = counters.rpm.fits_in_ms(1, key.rpm_limit)
        elif verdict is Verdict.TOKENS:
            retry_ms = counters.tpm.fits_in_ms(tokens, key.tpm_limit)
        counters.save()
        return Decision(
            verdict,
            counters.rpm.used,
            counters.tpm.used,
            usage.budget_used,
            max(counters.rpm.reset_ms(), counters.tpm.reset_ms()),
            retry_ms,
            lease_id,
        )


@retry_when_locked
def settle(key: KeyRecord, lease_id: str | None, tokens: int, log: dict, clock: Clock) -> None:
    with transaction.atomic():
        if lease_id is not None:
            usage = _locked_usage(key.id, clock)
            counters = _Counters(usage, key, clock)
            lease = QuotaLease.objects.filter(pk=lease_id).first()
            if lease is not None:
                counters.release(lease, lease.reserved - tokens)
                lease.delete()
            else:
                # The lease expired and its reservation was released: charge the usage
                # to the current windows instead.
                if key.tpm_limit is not None:
                    counters.tpm.add(tokens)
                usage.budget_used += tokens if key.budget_tokens is not None else 0
            counters.save()
        logs_write([log])


class DatabaseStore:
    async def reserve(self, key: KeyRecord, tokens: int) -> Decision:
        return await orm(reserve)(key, tokens, Clock.read())

    async def settle(self, key: KeyRecord, lease_id: str | None, tokens: int, log: dict) -> None:
        await orm(settle)(key, lease_id, tokens, log, Clock.read())

    async def log(self, record: dict) -> None:
        await orm(retry_when_locked(logs_write))([record])

    async def snapshot(self, key: KeyRecord) -> Snapshot:
        return await orm(snapshot)(key, Clock.read())


def snapshot(key: KeyRecord, clock: Clock) -> Snapshot:
    usage = KeyUsage.objects.filter(pk=key.id).first() or KeyUsage(key_id=key.id)
    budget_window, _ = clock.budget_window(key.budget_period)
    return Snapshot(
        rpm_used=Window(usage.rpm_buckets, clock).used,
        tpm_used=Window(usage.tpm_buckets, clock).used,
        budget_used=usage.budget_used if usage.budget_window == budget_window else 0,
        leases=QuotaLease.objects.filter(key_id=key.id).count(),
    )
