"""Quota counters in the database: the default when REDIS_URL is unset.

Every admission and settlement runs in one transaction whose first statements
lock the QuotaCounter rows of all its subjects (the key, its project, either's
limits for the model: accounts.quota.Subject): SELECT ... FOR UPDATE on
PostgreSQL, an UPDATE on SQLite (which takes its write lock). The locks come
before anything is read, so:

- check-then-increment races are excluded: two admissions sharing a subject (two
  keys of one project) run one after the other, and the second sees the first's
  increments (no overshoot of rpm, tpm, concurrency or either budget, across any
  number of processes);
- admission is all or nothing: every subject admits and is charged, or none is;
- no deadlocks: every transaction locks its rows in one global order (by subject
  name), and the request-log INSERT takes no lock another transaction waits on
  (LiteLLM's unordered multi-row upserts deadlocked, #27989);
- a settlement and its request-log row commit together or not at all;
- on SQLite the whole database is the lock; a transaction that loses the race
  for it is retried (retry_when_locked).

The cost is serialising the admissions of a project's keys when the project has
limits (a handful of queries each); Redis is the store for high rates.
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
from accounts.models import QuotaCounter, QuotaHold, RequestLog
from accounts.quota import (
    Clock,
    Decision,
    Snapshot,
    Subject,
    Used,
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
    spooled_subjects,
)
from accounts.services import KeyRecord
from llmgateway.db import database_unreachable, orm

logger = logging.getLogger(__name__)

LOCKED_RETRIES = 200

# Plain SQL on the two tables, through Django's connection: the ORM spent ~5 of the
# ~6.5 ms of CPU an admission plus a settlement took compiling a dozen statements.
USAGE = QuotaCounter._meta.db_table
HOLD = QuotaHold._meta.db_table


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
    """A subject's QuotaCounter row, locked."""

    subject: str
    rpm_buckets: dict
    tpm_buckets: dict
    budget_window: str
    budget_used: int
    money_used: int


@dataclass(slots=True)
class _Hold:
    subject: str
    reserved: int
    cost: int
    tpm_window: int | None
    budget_window: str
    money: bool


def _locked_usage(subject: str, clock: Clock) -> _Usage:
    """Lock and return a subject's counters (call inside a transaction).

    PostgreSQL: SELECT ... FOR UPDATE takes the row lock. SQLite has no row locks:
    a write first takes the database's write lock, so the transaction never has
    to upgrade a read lock later (which fails with SQLITE_BUSY).
    """
    select = (
        f"SELECT rpm_buckets, tpm_buckets, budget_window, budget_used, money_used FROM {USAGE} "
        "WHERE subject = %s"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"UPDATE {USAGE} SET touched_at = %s WHERE subject = %s",
                [_db_time(_now(clock)), subject],
            )
            row = None
            if cursor.rowcount:
                cursor.execute(select, [subject])
                row = cursor.fetchone()
        else:
            cursor.execute(select + " FOR UPDATE", [subject])
            row = cursor.fetchone()
        if row is None:
            # A subject's first use: create its row, then lock it.
            cursor.execute(
                f"INSERT INTO {USAGE} (subject, touched_at, rpm_buckets, tpm_buckets, "
                f"budget_window, budget_used, money_used) VALUES (%s, %s, {_json_param()}, "
                f"{_json_param()}, '', 0, 0) ON CONFLICT (subject) DO NOTHING",
                [subject, _db_time(_now(clock)), "{}", "{}"],
            )
            return _locked_usage(subject, clock)
    rpm, tpm, budget_window, budget_used, money_used = row
    return _Usage(
        subject, _json_value(rpm), _json_value(tpm), budget_window, budget_used, money_used
    )


class _Counters:
    """A locked QuotaCounter row's windows, read and written back as one."""

    def __init__(self, usage: _Usage, subject: Subject, clock: Clock) -> None:
        self.usage = usage
        self.clock = clock
        self.rpm = Window(usage.rpm_buckets, clock)
        self.tpm = Window(usage.tpm_buckets, clock)
        budget_window, _ = clock.budget_window(subject.budget_period)
        if usage.budget_window != budget_window:
            usage.budget_window, usage.budget_used, usage.money_used = budget_window, 0, 0

    def release(self, hold: _Hold, amount: int, cost: int) -> None:
        """Take `amount` tokens and `cost` off the windows `hold` was charged to, where
        they still count."""
        if hold.tpm_window is not None:
            self.tpm.adjust(hold.tpm_window, -amount)
        if hold.budget_window and hold.budget_window == self.usage.budget_window:
            self.usage.budget_used -= amount
            if hold.money:
                self.usage.money_used -= cost

    def used(self) -> Used:
        return Used(
            self.rpm.used,
            self.tpm.used,
            self.usage.budget_used,
            self.usage.money_used,
            max(self.rpm.reset_ms(), self.tpm.reset_ms()),
        )

    def save(self) -> None:
        usage = self.usage
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {USAGE} SET touched_at = %s, rpm_buckets = {_json_param()}, "
                f"tpm_buckets = {_json_param()}, budget_window = %s, budget_used = %s, "
                "money_used = %s WHERE subject = %s",
                [
                    _db_time(_now(self.clock)),
                    json.dumps(self.rpm.stored()),
                    json.dumps(self.tpm.stored()),
                    usage.budget_window,
                    usage.budget_used,
                    usage.money_used,
                    usage.subject,
                ],
            )


def _lock_all(subjects: tuple[Subject, ...], clock: Clock) -> dict[str, _Counters]:
    """Lock every subject's row, in name order: all transactions lock in one order, so
    two of them never wait on each other in a cycle."""
    by_name = {s.name: s for s in subjects}
    return {
        name: _Counters(_locked_usage(name, clock), by_name[name], clock)
        for name in sorted(by_name)
    }


def _expire_holds(counters: dict[str, _Counters], clock: Clock) -> dict[str, int]:
    """Release the subjects' expired holds; return how many are live per subject."""
    names = list(counters)
    marks = ", ".join(["%s"] * len(names))
    live = dict.fromkeys(names, 0)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, subject, reserved, cost, tpm_window, budget_window, money, "
            f"expires_at <= %s FROM {HOLD} WHERE subject IN ({marks})",
            [_db_time(_now(clock)), *names],
        )
        expired = []
        for row in cursor.fetchall():
            if row[7]:
                hold = _Hold(*row[1:7])
                counters[hold.subject].release(hold, hold.reserved, hold.cost)
                expired.append(row[0])
            else:
                live[row[1]] += 1
        if expired:
            marks = ", ".join(["%s"] * len(expired))
            cursor.execute(f"DELETE FROM {HOLD} WHERE id IN ({marks})", expired)
    return live


def _holds_create(
    lease_id: str, subjects: tuple[Subject, ...], counters, clock: Clock, tokens: int, cost: int
) -> None:
    expires_at = _db_time(_now(clock) + timedelta(seconds=lease_seconds()))
    rows = []
    for subject in subjects:
        window = counters[subject.name].usage.budget_window
        budgeted = subject.budget_tokens is not None or subject.budget_money is not None
        rows.append(
            [
                lease_id,
                subject.name,
                expires_at,
                tokens,
                cost,
                clock.bucket if subject.tpm_limit is not None else None,
                window if budgeted else "",
                subject.budget_money is not None,
            ]
        )
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {HOLD} (lease_id, subject, expires_at, reserved, cost, tpm_window, "
            "budget_window, money) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def _holds_take(lease_id: str) -> dict[str, _Hold]:
    """Delete the lease's holds and return them by subject (none: expired and released)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {HOLD} WHERE lease_id = %s "
            "RETURNING subject, reserved, cost, tpm_window, budget_window, money",
            [lease_id],
        )
        return {row[0]: _Hold(*row) for row in cursor.fetchall()}


def _verdict(
    counters: _Counters, subject: Subject, tokens: int, cost: int, live: int
) -> tuple[Verdict, int]:
    """The subject's verdict and, for a rate refusal, until the request would fit."""
    # The same order as the Redis script: an exhausted budget wins, so the client is
    # told not to retry.
    usage = counters.usage
    if subject.budget_tokens is not None and usage.budget_used + tokens > subject.budget_tokens:
        return Verdict.BUDGET, 0
    if subject.budget_money is not None and usage.money_used + cost > subject.budget_money:
        return Verdict.MONEY, 0
    if subject.rpm_limit is not None and counters.rpm.used + 1 > subject.rpm_limit:
        return Verdict.REQUESTS, counters.rpm.fits_in_ms(1, subject.rpm_limit)
    if subject.tpm_limit is not None and counters.tpm.used + tokens > subject.tpm_limit:
        return Verdict.TOKENS, counters.tpm.fits_in_ms(tokens, subject.tpm_limit)
    if subject.max_concurrency is not None and live + 1 > subject.max_concurrency:
        return Verdict.CONCURRENCY, 0
    return Verdict.OK, 0


def _charge(counters: _Counters, subject: Subject, tokens: int, cost: int) -> None:
    counters.rpm.add(1)
    if subject.tpm_limit is not None:
        counters.tpm.add(tokens)
    if subject.budget_tokens is not None or subject.budget_money is not None:
        counters.usage.budget_used += tokens
    if subject.budget_money is not None:
        counters.usage.money_used += cost


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
def reserve(
    subjects: tuple[Subject, ...],
    tokens: int,
    clock: Clock,
    lease_id: str | None = None,
    cost: int = 0,
) -> Decision:
    """Admit or refuse over every subject; an admission holds `tokens` and `cost` on each
    under the lease `lease_id` (a new one when None)."""
    lease_id = lease_id or uuid.uuid4().hex
    if not subjects:  # nothing to enforce (the admission skips the store then anyway)
        return Decision.of(Verdict.OK, (), [], 0, 0, lease_id)
    with transaction.atomic():
        counters = _lock_all(subjects, clock)
        live = _expire_holds(counters, clock)
        for index, subject in enumerate(subjects):
            mine = counters[subject.name]
            verdict, retry_ms = _verdict(mine, subject, tokens, cost, live[subject.name])
            if verdict is not Verdict.OK:
                for each in counters.values():
                    each.save()
                order = subjects[index:] + subjects[:index]
                return Decision.of(verdict, order, [mine.used()], 0, retry_ms, None)
        for subject in subjects:
            _charge(counters[subject.name], subject, tokens, cost)
        _holds_create(lease_id, subjects, counters, clock, tokens, cost)
        for each in counters.values():
            each.save()
        used = [counters[s.name].used() for s in subjects]
        return Decision.of(Verdict.OK, subjects, used, 0, 0, lease_id)


@retry_when_locked
def settle(
    subjects: tuple[Subject, ...],
    lease_id: str | None,
    tokens: int,
    log: dict | None,
    clock: Clock,
    *,
    cost: int = 0,
    replay: bool = False,
) -> None:
    """Charge `tokens` and `cost` in place of the lease's reservation on every subject
    and write `log`, together.

    A `replay` (from the spool) is applied only if its log row is not there yet:
    the row commits with the settlement, so its presence means this settlement
    was applied already (its first try committed, and only the answer was
    lost). A settlement without a log (the release of a reservation whose
    outcome was uncertain) charges 0 and may be applied any number of times.
    """
    with transaction.atomic():
        if lease_id is not None and subjects:
            counters = _lock_all(subjects, clock)
            if replay and log is not None and _logged(log):
                return
            holds = _holds_take(lease_id)
            for subject in subjects:
                mine = counters[subject.name]
                hold = holds.get(subject.name)
                if hold is not None:
                    mine.release(hold, hold.reserved - tokens, hold.cost - cost)
                else:
                    # The lease expired and its reservation was released: charge the
                    # usage to the current windows instead.
                    if subject.tpm_limit is not None:
                        mine.tpm.add(tokens)
                    if subject.budget_tokens is not None or subject.budget_money is not None:
                        mine.usage.budget_used += tokens
                    if subject.budget_money is not None:
                        mine.usage.money_used += cost
            for each in counters.values():
                each.save()
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
                spooled_subjects(entry),
                entry["lease_id"],
                entry["tokens"],
                entry["log"],
                Clock.read(),
                cost=entry.get("cost", 0),
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

    async def reserve(
        self,
        key: KeyRecord,
        tokens: int,
        *,
        subjects: tuple[Subject, ...] | None = None,
        cost: int = 0,
    ) -> Decision:
        self.replayer.check_once()
        subjects = key.subjects() if subjects is None else subjects
        lease_id = uuid.uuid4().hex
        try:
            return await orm(reserve)(subjects, tokens, Clock.read(), lease_id, cost)
        except DatabaseError as exc:
            if getattr(exc, "attempted", True):
                # It may have committed with only its answer lost: release the lease if so.
                entry = settle_entry("database", key, lease_id, 0, None, subjects=subjects)
                await self.replayer.keep([entry])
            raise

    def reserve_soon(
        self,
        key: KeyRecord,
        tokens: int,
        *,
        subjects: tuple[Subject, ...] | None = None,
        cost: int = 0,
    ) -> None:
        """Never: an admission here is an ORM call in a thread, which needs a task."""
        return None

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
        """Never: a settlement here is a transaction in the ORM thread, awaited."""
        return False

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
        self.replayer.check_once()
        subjects = key.subjects() if subjects is None else subjects
        try:
            await orm(settle)(subjects, lease_id, tokens, log, Clock.read(), cost=cost)
        except DatabaseError as exc:
            logger.warning("settlement spooled (%s); written when the database answers", exc)
            entry = settle_entry(
                "database", key, lease_id, tokens, log, subjects=subjects, cost=cost
            )
            await self.replayer.keep([entry])

    async def log(self, record: dict) -> None:
        self.replayer.check_once()
        try:
            await orm(retry_when_locked(logs_write))([record])
        except DatabaseError as exc:
            logger.warning("request log spooled (%s); written when the database answers", exc)
            await self.replayer.keep([log_entry("database", record)])

    async def snapshot(self, key: KeyRecord, subject: Subject | None = None) -> Snapshot:
        return await orm(snapshot)(key, Clock.read(), subject)


def snapshot(key: KeyRecord, clock: Clock, subject: Subject | None = None) -> Snapshot:
    subject = subject or key.key_subject()
    usage = QuotaCounter.objects.filter(pk=subject.name).first() or QuotaCounter(
        subject=subject.name
    )
    budget_window, _ = clock.budget_window(subject.budget_period)
    current = usage.budget_window == budget_window
    return snapshot_of(
        subject,
        Window(usage.rpm_buckets, clock),
        Window(usage.tpm_buckets, clock),
        usage.budget_used if current else 0,
        QuotaHold.objects.filter(subject=subject.name).count(),
        usage.money_used if current else 0,
    )
