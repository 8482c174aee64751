"""A durable local spool: settlements and request-log records a store could not write.

When the database (or Redis) is out, a quota store appends what it could not
write to a file of this process under GATEWAY_SPOOL_DIR, one JSON object a line,
flushed and fsynced before the call returns, and the store's `SpoolReplayer`
writes it when the store is back. Nothing a request settled or logged is lost
to an outage, and nothing is applied twice:

- every entry is safe to apply again. A settlement carries its request-log
  record, and the database store applies it only if that record's row is not
  there yet (the row and the settlement commit together); the Redis store's
  settle script charges a lease only once (redis_store.py). A record alone is
  inserted with ON CONFLICT DO NOTHING on its unique log_id. So a replay that
  stops halfway is simply run again, and an outcome that was uncertain (the
  database committed, but its answer never came) can be spooled and replayed;
- a process writes only its own file and holds an exclusive lock (flock) on
  it while it writes there. A replay takes the process's file out of use
  (new entries go to a new file) and claims every other file that no live
  process holds: the files a process that died left behind are replayed by
  whichever process next replays;
- an entry the database refuses for good (not because it is out) moves to a
  dead-letter file beside the others (dead-*.jsonl), logged, for an operator,
  rather than blocking the spool.

Entries: {"kind": "settle" | "log", "store": "database" | "redis", "key": {...}
or null, "subjects": [quota subjects], "lease_id": str or null, "tokens": int,
"cost": int (money units), "log": record or null}.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING

import orjson
from django.conf import settings

from llmgateway import background

if TYPE_CHECKING:
    from accounts.quota import Subject
    from accounts.services import KeyRecord

logger = logging.getLogger(__name__)

# Entries handed to the store's apply function at a time.
REPLAY_BATCH = 500
# Seconds between replay attempts while the store is still out (doubling up to the last).
REPLAY_RETRY_FIRST = 0.5
REPLAY_RETRY_MAX = 5.0

Entry = dict


def settle_entry(
    store: str,
    key: KeyRecord,
    lease_id: str | None,
    tokens: int,
    log: dict | None,
    *,
    subjects: tuple[Subject, ...] | None = None,
    cost: int = 0,
) -> Entry:
    """A settlement to apply later: what the store's settle needs of the key (its quota
    subjects), and the rest."""
    fields = {
        "id": key.id,
        "tpm_limit": key.tpm_limit,
        "budget_tokens": key.budget_tokens,
        "budget_period": key.budget_period,
    }
    subjects = key.subjects() if subjects is None else subjects
    return {
        "kind": "settle",
        "store": store,
        "key": fields,
        "subjects": [s.as_dict() for s in subjects],
        "lease_id": lease_id,
        "tokens": tokens,
        "cost": cost,
        "log": log,
    }


def spooled_subjects(entry: Entry) -> tuple[Subject, ...]:
    """The quota subjects of a spooled settlement."""
    from accounts.quota import Subject

    if "subjects" in entry:
        return tuple(Subject.from_dict(s) for s in entry["subjects"])
    return spooled_key(entry).subjects()  # written by a version before projects


def log_entry(store: str, record: dict) -> Entry:
    return {
        "kind": "log",
        "store": store,
        "key": None,
        "lease_id": None,
        "tokens": 0,
        "log": record,
    }


def spooled_key(entry: Entry) -> KeyRecord:
    """The key of a spooled settlement, as much of it as settling reads."""
    from accounts.services import KeyRecord

    fields = entry["key"]
    return KeyRecord(
        id=fields["id"],
        public_id="",
        name="",
        revoked=False,
        expires_at=None,
        models=None,
        rpm_limit=None,
        tpm_limit=fields["tpm_limit"],
        max_concurrency=None,
        budget_tokens=fields["budget_tokens"],
        budget_period=fields["budget_period"],
    )


def spool() -> Spool:
    """This process's spool in settings.GATEWAY_SPOOL_DIR."""
    return _spool_in(str(settings.GATEWAY_SPOOL_DIR))


@cache
def _spool_in(directory: str) -> Spool:
    return Spool(Path(directory))


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._current: tuple[Path, IO[bytes]] | None = None

    def append(self, entries: list[Entry]) -> None:
        """Write `entries` to this process's file, durably (blocking: call in a thread)."""
        data = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
        with self._lock:
            handle = self._open()
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def _open(self) -> IO[bytes]:
        if self._current is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"spool-{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
            handle = path.open("a+b")  # appended to, and read back when replayed
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._current = (path, handle)
        return self._current[1]

    def pending(self) -> bool:
        """Whether any spool file exists (this process's or another's)."""
        with contextlib.suppress(FileNotFoundError):
            return any(self.directory.glob("spool-*.jsonl"))
        return False

    def claim(self) -> list[tuple[Path, IO[bytes]]]:
        """The files to replay, each locked: this process's own (new entries go to a
        new file from now on) and every file no live process holds."""
        claimed: list[tuple[Path, IO[bytes]]] = []
        with self._lock:
            if self._current is not None:
                claimed.append(self._current)
                self._current = None
        mine = {path for path, _ in claimed}
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.directory.glob("spool-*.jsonl")):
                if path not in mine and (handle := _lock_if_free(path)) is not None:
                    claimed.append((path, handle))
        return claimed

    def bury(self, entries: list[Entry]) -> None:
        """Keep entries that can never be applied in the dead-letter file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"dead-{os.getpid()}.jsonl").open("ab") as handle:
            handle.write(b"".join(orjson.dumps(entry) + b"\n" for entry in entries))
            handle.flush()
            os.fsync(handle.fileno())


def _lock_if_free(path: Path) -> IO[bytes] | None:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Replayed and removed by another process between the listing and the lock.
        if os.fstat(handle.fileno()).st_nlink == 0:
            raise BlockingIOError
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _batches(handle: IO[bytes]) -> Iterator[list[Entry]]:
    handle.seek(0)
    batch: list[Entry] = []
    for line in handle:
        if not line.endswith(b"\n"):
            break  # a write cut short by a crash: never acknowledged to anyone
        batch.append(orjson.loads(line))
        if len(batch) >= REPLAY_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


# Applies a batch; raises when the store is still out (the batch is tried again later),
# returns the entries it refused for good.
Apply = Callable[[list[Entry]], Awaitable[list[Entry]]]


async def spool_replay(spool: Spool, apply: Apply) -> bool:
    """Replay every claimable file; True if none was left behind."""
    claimed = await asyncio.to_thread(spool.claim)
    complete = True
    for path, handle in claimed:
        try:
            batches = _batches(handle)
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                refused = await apply(batch)
                if refused:
                    logger.error(
                        "%d spooled entries cannot be written; kept in dead-*.jsonl", len(refused)
                    )
                    await asyncio.to_thread(spool.bury, refused)
            path.unlink()
        except Exception as exc:
            complete = False
            logger.warning("spool %s not replayed yet: %s", path.name, exc)
        finally:
            handle.close()
    return complete


class SpoolReplayer:
    """Replays the spool in the background until it is empty."""

    def __init__(self, spool: Spool, apply: Apply) -> None:
        self.spool = spool
        self.apply = apply
        self._task: asyncio.Future | None = None
        self._checked = False
        self._stopping = False
        background.at_shutdown(self.stop)

    def stop(self) -> None:
        """At shutdown: one more attempt at most; what is left waits in its file for the
        next process (or `manage.py drainrequestlogs`)."""
        self._stopping = True

    def kick(self, delay: float = REPLAY_RETRY_FIRST) -> None:
        """Start replaying after `delay` seconds unless a replay is under way."""
        self._checked = True
        if self._task is None or self._task.done():
            self._task = background.spawn(self._run(delay))

    def check_once(self) -> None:
        """On a process's first use of its store: replay what an earlier one left."""
        if not self._checked:
            self._checked = True
            if self.spool.pending():
                self.kick(0)

    async def _run(self, delay: float) -> None:
        while True:
            if not self._stopping:
                await asyncio.sleep(delay)
            if await spool_replay(self.spool, self.apply) or self._stopping:
                return
            delay = min(max(delay, REPLAY_RETRY_FIRST) * 2, REPLAY_RETRY_MAX)

    async def keep(self, entries: list[Entry]) -> None:
        """Spool `entries` and make sure a replay follows."""
        await asyncio.to_thread(self.spool.append, entries)
        self.kick()
