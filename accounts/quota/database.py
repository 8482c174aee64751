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
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import DatabaseError, OperationalError, connection, transaction

from accounts.logs import logs_write
from accounts.models import KeyUsage, QuotaLease, RequestLog
from accounts.quota import (
    Clock,
    Decision,
    Snapshot,
    Verdict,
    Window,
    lease_seconds,
    snapshot_of,
)
from accounts.quota.spool import (
    Entry,
    SpoolReplayer,
    log_entry,
    settle_entry,
    spool,
    spooled_key,
)
from accounts.services import KeyRecord
from llmgateway.db import database_unreachable, orm

logger = logging.getLogger(__name__)

LOCKED_RETRIES = 200

# Plain SQL on the two tables, through Django's connection: the ORM spent ~5 of the
# ~6.5 ms of CPU an admission plus a settlement took compiling a dozen statements.
USAGE = KeyUsage._meta.db_table
LEASE = QuotaLease._meta.db_table


def _now(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.now_ms / 1000, UTC)


def _db_time(moment: datetime):
    """A datetime as the backend stores DateTimeField values (SQLite: UTC text)."""
    return connection.ops.adapt_datetimefield_value(moment)


def _json_param() -> str:
    """The placeholder for a JSON value: PostgreSQL's jsonb needs the cast."""
    return "%s::jsonb" if connection.vendor == "postgresql" else "%s"


def _json_value(value) -> dict:
    return value if isinstance(value, dict) else json.loads(value or "{}")


@dataclass(slots=True)
class _Usage:
    """A key's KeyUsage row, locked."""

    key_id: int
    rpm_buckets: dict
    tpm_buckets: dict
    budget_window: str
    budget_used: int


@dataclass(slots=True)
class _Lease:
    id: str
    reserved: int
    tpm_window: int | None
    budget_window: str


def _locked_usage(key_id: int, clock: Clock) -> _Usage:
    """Lock and return the key's counters (call inside a transaction).

    PostgreSQL: SELECT ... FOR UPDATE takes the row lock. SQLite has no row locks:
    a write first takes the database's write lock, so the transaction never has
    to upgrade a read lock later (which fails with SQLITE_BUSY).
    """
    select = (
        f"SELECT rpm_buckets, tpm_buckets, budget_window, budget_used FROM {USAGE} "
        "WHERE key_id = %s"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"UPDATE {USAGE} SET touched_at = %s WHERE key_id = %s",
                [_db_time(_now(clock)), key_id],
            )
            row = None
            if cursor.rowcount:
                cursor.execute(select, [key_id])
                row = cursor.fetchone()
        else:
            cursor.execute(select + " FOR UPDATE", [key_id])
            row = cursor.fetchone()
        if row is None:
            # First use of a key created without its row: create it, then lock it.
            cursor.execute(
                f"INSERT INTO {USAGE} (key_id, touched_at, rpm_buckets, tpm_buckets, "
                f"budget_window, budget_used) VALUES (%s, %s, {_json_param()}, "
                f"{_json_param()}, '', 0) ON CONFLICT (key_id) DO NOTHING",
                [key_id, _db_time(_now(clock)), "{}", "{}"],
            )
            return _locked_usage(key_id, clock)
    rpm, tpm, budget_window, budget_used = row
    return _Usage(key_id, _json_value(rpm), _json_value(tpm), budget_window, budget_used)


class _Counters:
    """A locked KeyUsage row's windows, read and written back as one."""

    def __init__(self, usage: _Usage, key: KeyRecord, clock: Clock) -> None:
        self.usage = usage
        self.clock = clock
        self.rpm = Window(usage.rpm_buckets, clock)
        self.tpm = Window(usage.tpm_buckets, clock)
        budget_window, _ = clock.budget_window(key.budget_period)
        if usage.budget_window != budget_window:
            usage.budget_window, usage.budget_used = budget_window, 0

    def release(self, lease: _Lease, amount: int) -> None:
        """Take `amount` off the windows `lease` was charged to, where they still count."""
        if lease.tpm_window is not None:
            self.tpm.adjust(lease.tpm_window, -amount)
        if lease.budget_window and lease.budget_window == self.usage.budget_window:
            self.usage.budget_used -= amount

    def save(self) -> None:
        usage = self.usage
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {USAGE} SET touched_at = %s, rpm_buckets = {_json_param()}, "
                f"tpm_buckets = {_json_param()}, budget_window = %s, budget_used = %s "
                "WHERE key_id = %s",
                [
                    _db_time(_now(self.clock)),
                    json.dumps(self.rpm.stored()),
                    json.dumps(self.tpm.stored()),
                    usage.budget_window,
                    usage.budget_used,
                    usage.key_id,
                ],
            )


def _expire_leases(counters: _Counters, key_id: int, clock: Clock) -> int:
    """Release the key's expired leases; return how many are still live (one SELECT)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, reserved, tpm_window, budget_window, expires_at <= %s FROM {LEASE} "
            "WHERE key_id = %s",
            [_db_time(_now(clock)), key_id],
        )
        rows = cursor.fetchall()
        expired = [_Lease(*row[:4]) for row in rows if row[4]]
        for lease in expired:
            counters.release(lease, lease.reserved)
        if expired:
            marks = ", ".join(["%s"] * len(expired))
            cursor.execute(
                f"DELETE FROM {LEASE} WHERE id IN ({marks})", [lease.id for lease in expired]
            )
    return len(rows) - len(expired)


def _lease_create(
    lease_id: str, key_id: int, expires_at: datetime, reserved: int, tpm_window, budget_window
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {LEASE} (id, key_id, expires_at, reserved, tpm_window, budget_window) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [lease_id, key_id, _db_time(expires_at), reserved, tpm_window, budget_window],
        )


def _lease_take(lease_id: str) -> _Lease | None:
    """Delete the lease and return it (None if it expired and was released already)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {LEASE} WHERE id = %s RETURNING id, reserved, tpm_window, budget_window",
            [lease_id],
        )
        row = cursor.fetchone()
    return _Lease(*row) if row is not None else None


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
    the transaction wrote nothing, so it is simply run again. The servers begin
    their SQLite transactions IMMEDIATE (settings.SQLITE_OPTIONS), which waits for
    the lock instead; this covers a connection configured deferred (the test
    process). PostgreSQL waits on the row lock and never gets here.
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
def reserve(key: KeyRecord, tokens: int, clock: Clock, lease_id: str | None = None) -> Decision:
    """Admit or refuse; an admission holds `tokens` under the lease `lease_id` (a new
    one when None)."""
    lease_id = lease_id or uuid.uuid4().hex
    with transaction.atomic():
        usage = _locked_usage(key.id, clock)
        counters = _Counters(usage, key, clock)
        live = _expire_leases(counters, key.id, clock)
        verdict = _verdict(counters, key, tokens, live)
        retry_ms = 0
        if verdict is Verdict.OK:
            counters.rpm.add(1)
            if key.tpm_limit is not None:
                counters.tpm.add(tokens)
            usage.budget_used += tokens if key.budget_tokens is not None else 0
            _lease_create(
                lease_id,
                key.id,
                _now(clock) + timedelta(seconds=lease_seconds()),
                tokens,
                clock.bucket if key.tpm_limit is not None else None,
                usage.budget_window if key.budget_tokens is not None else "",
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
            lease_id if verdict is Verdict.OK else None,
        )


@retry_when_locked
def settle(
    key: KeyRecord,
    lease_id: str | None,
    tokens: int,
    log: dict | None,
    clock: Clock,
    *,
    replay: bool = False,
) -> None:
    """Charge `tokens` in place of the lease's reservation and write `log`, together.

    A `replay` (from the spool) is applied only if its log row is not there yet:
    the row commits with the settlement, so its presence means this settlement
    was applied already (its first try committed, and only the answer was
    lost). A settlement without a log (the release of a reservation whose
    outcome was uncertain) charges 0 and may be applied any number of times.
    """
    with transaction.atomic():
        if lease_id is not None:
            usage = _locked_usage(key.id, clock)
            if replay and log is not None and _logged(log):
                return
            counters = _Counters(usage, key, clock)
            lease = _lease_take(lease_id)
            if lease is not None:
                counters.release(lease, lease.reserved - tokens)
            else:
                # The lease expired and its reservation was released: charge the usage
                # to the current windows instead.
                if key.tpm_limit is not None:
                    counters.tpm.add(tokens)
                usage.budget_used += tokens if key.budget_tokens is not None else 0
            counters.save()
        if log is not None:
            logs_write([log])


# An entry that cannot even be turned into its rows (a record from another version).
MALFORMED = (ValueError, TypeError, KeyError)


def _logged(log: dict) -> bool:
    return RequestLog.objects.filter(log_id=uuid.UUID(log["log_id"])).exists()


def replay(entries: list[Entry]) -> list[Entry]:
    """Apply spooled entries (see spool.py); return those the database refuses for good.

    Raises while the database is still out: the whole batch is tried again later.
    """
    refused: list[Entry] = []
    records = [entry for entry in entries if entry["kind"] == "log"]
    settlements = [entry for entry in entries if entry["kind"] == "settle"]
    if records:
        refused += _write_records(records)
    for entry in settlements:
        if entry["store"] != "database":
            # Counters kept in Redis by a process configured for it: only the log applies here.
            logger.warning("spooled Redis settlement replayed without Redis: its log only")
            refused += _write_records([entry] if entry["log"] else [])
            continue
        try:
            settle(
                spooled_key(entry),
                entry["lease_id"],
                entry["tokens"],
                entry["log"],
                Clock.read(),
                replay=True,
            )
        except DatabaseError as exc:
            if database_unreachable(exc):
                raise
            refused.append(entry)
        except MALFORMED:
            refused.append(entry)
    return refused


def _write_records(entries: list[Entry]) -> list[Entry]:
    """Insert the entries' records; return the entries the database refuses for good."""
    try:
        retry_when_locked(logs_write)([entry["log"] for entry in entries])
        return []
    except DatabaseError as exc:
        if database_unreachable(exc):
            raise
    except MALFORMED:
        pass
    if len(entries) == 1:
        return entries
    return [entry for entry in entries if _write_records([entry])]


class DatabaseStore:
    """The database store; what it cannot write while the database is out is spooled
    (spool.py) and written when it returns."""

    def __init__(self) -> None:
        self.replayer = SpoolReplayer(spool(), orm(replay))

    async def reserve(self, key: KeyRecord, tokens: int) -> Decision:
        self.replayer.check_once()
        lease_id = uuid.uuid4().hex
        try:
            return await orm(reserve)(key, tokens, Clock.read(), lease_id)
        except DatabaseError as exc:
            if getattr(exc, "attempted", True):
                # It may have committed with only its answer lost: release the lease if so.
                await self.replayer.keep([settle_entry("database", key, lease_id, 0, None)])
            raise

    async def settle(
        self, key: KeyRecord, lease_id: str | None, tokens: int, log: dict | None
    ) -> None:
        self.replayer.check_once()
        try:
            await orm(settle)(key, lease_id, tokens, log, Clock.read())
        except DatabaseError as exc:
            logger.warning("settlement spooled (%s); written when the database answers", exc)
            await self.replayer.keep([settle_entry("database", key, lease_id, tokens, log)])

    async def log(self, record: dict) -> None:
        self.replayer.check_once()
        try:
            await orm(retry_when_locked(logs_write))([record])
        except DatabaseError as exc:
            logger.warning("request log spooled (%s); written when the database answers", exc)
            await self.replayer.keep([log_entry("database", record)])

    async def snapshot(self, key: KeyRecord) -> Snapshot:
        return await orm(snapshot)(key, Clock.read())


def snapshot(key: KeyRecord, clock: Clock) -> Snapshot:
    usage = KeyUsage.objects.filter(pk=key.id).first() or KeyUsage(key_id=key.id)
    budget_window, _ = clock.budget_window(key.budget_period)
    return snapshot_of(
        key,
        Window(usage.rpm_buckets, clock),
        Window(usage.tpm_buckets, clock),
        usage.budget_used if usage.budget_window == budget_window else 0,
        QuotaLease.objects.filter(key_id=key.id).count(),
    )
