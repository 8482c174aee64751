"""Quota counters in Redis, shared by every replica (REDIS_URL set).

Admission is one Lua script: it releases expired leases, checks the budget,
requests per minute, tokens per minute and concurrency, and only if all pass
increments them and records the lease. Redis runs a script atomically, so:

- check-then-increment races are excluded across every process and replica:
  no other admission or settlement of any key interleaves with a script (the
  race behind LiteLLM #18730, #27736, #34732);
- concurrency is one sorted set of leases per key, shared by all replicas, not
  a per-process counter (LiteLLM #16011, #27900);
- a lease carries an expiry; the next admission of that key releases expired
  leases and their reservations, so a process that died mid-request leaks
  nothing for longer than QUOTA_LEASE_SECONDS (LiteLLM #27639);
- settlement is one script too: it swaps the reservation for the exact usage,
  drops the lease and pushes the request-log record onto the outbox list in
  the same atomic step, so a log row exists exactly when a settlement does.

The outbox is drained into the database in batches by whichever process holds
the drain lock (`LogDrain`, at most once per REQUEST_LOG_DRAIN_SECONDS), and
by `manage.py drainrequestlogs`. Taking the lock and reading a batch is one
script; trimming the batch and releasing the lock is another, which trims only
while the lock is still ours (a drainer that stalled past the lock's expiry
must not trim items its successor has not written). A drainer that dies after
inserting but before trimming leaves items that the next one inserts again;
RequestLog.log_id is unique and duplicates are ignored.

The scripts are called by SHA (EVALSHA; loaded on first NOSCRIPT): the
admission script is 2 KB, which EVAL would send, and Redis would hash, on
every request. Commands go through `resp.RespClient` (one pipelined
connection per event loop; see there for why not redis-py's client).

If Redis is unreachable admissions fail closed (503 from the caller); the
limits never silently fall back to per-process counting (LiteLLM #35533). A
settlement or record Redis cannot take writes its log row to the database
directly and spools the settlement (spool.py), replayed once Redis is back: the
settle script charges a lease only while it is held, or once after an
admission released it on expiry (recorded in the key's `expired` hash for a
day), so a replay of a settlement already applied charges nothing. While the
database is out the outbox keeps every record and the drain retries; a record
the database refuses for good moves to DEAD_LETTERS, never dropped.
All of a key's Redis keys share the hash tag {<key id>}, so the scripts are
valid on Redis Cluster. The clock is the gateway's (replicas must run NTP;
skew only shifts bucket boundaries). requests and tokens per minute are sliding
windows of one-second buckets, one hash per key (accounts/quota/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
import weakref

import orjson
from django.conf import settings
from django.db import DatabaseError

from accounts.logs import logs_write, logs_write_json
from accounts.quota import (
    BUCKET_MS,
    WINDOW_BUCKETS,
    Clock,
    Decision,
    Snapshot,
    Verdict,
    Window,
    lease_seconds,
    limit_arg,
    snapshot_of,
)
from accounts.quota.database import replay as database_replay
from accounts.quota.database import retry_when_locked
from accounts.quota.resp import (
    RedisConnectionError,
    RedisNoAnswer,
    RedisReplyError,
    RespClient,
    Script,
)
from accounts.quota.spool import Entry, SpoolReplayer, log_entry, settle_entry, spool, spooled_key
from accounts.services import KeyRecord
from llmgateway import background
from llmgateway.db import orm

logger = logging.getLogger(__name__)

OUTBOX = "gw:requestlog:outbox"
DEAD_LETTERS = "gw:requestlog:dead"
DRAIN_LOCK = "gw:requestlog:drain-lock"
# How long a lease released on expiry can still be charged by its late settlement.
EXPIRED_KEEP_MS = 86_400_000
DRAIN_BATCH = 500
DRAIN_LOCK_MS = 30_000
# Seconds between drain attempts while the database is out (doubling up to the last).
DRAIN_RETRY_FIRST = 0.5
DRAIN_RETRY_MAX = 5.0
# A bucket hash outlives its newest bucket's window by a few seconds.
WINDOW_KEEP_MS = (WINDOW_BUCKETS + 5) * BUCKET_MS

# KEYS: leases (zset id→expiry ms), held (hash id→"tokens|tpm bucket|budget key"),
#       rpm buckets (hash second→count), tpm buckets (hash second→tokens), budget counter,
#       expired (hash: leases released on expiry, not charged yet)
# ARGV: now ms, lease id, lease expiry ms, tokens, rpm limit, tpm limit,
#       concurrency limit, budget limit (-1: none), current bucket, oldest counted bucket,
#       ms from a bucket's start until it stops counting, bucket hash ttl ms,
#       budget ttl ms (0: none)
# Returns {verdict, rpm used, tpm used, budget used, reset ms, retry ms}.
RESERVE = """
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do
  local held = redis.call('HGET', KEYS[2], id)
  if held then
    local amount, tpmbucket, budgetkey = string.match(held, '^(%-?%d+)|([^|]*)|(.*)$')
    if tpmbucket ~= '' and redis.call('HEXISTS', KEYS[4], tpmbucket) == 1 then
      redis.call('HINCRBY', KEYS[4], tpmbucket, -tonumber(amount))
    end
    if budgetkey ~= '' and redis.call('EXISTS', budgetkey) == 1 then
      redis.call('DECRBY', budgetkey, amount)
    end
    redis.call('HDEL', KEYS[2], id)
    redis.call('HSET', KEYS[6], id, 1)
    redis.call('PEXPIRE', KEYS[6], EXPIRED_KEEP_MS)
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end

local bucket, oldest, span = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
-- A sliding window: drop buckets that no longer count, total the rest (oldest first).
local function window(hash)
  local flat = redis.call('HGETALL', hash)
  local total, stale, live = 0, {}, {}
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b < oldest then
      stale[#stale + 1] = flat[i]
    else
      local n = tonumber(flat[i + 1])
      total = total + n
      live[#live + 1] = {b, n}
    end
  end
  if #stale > 0 then redis.call('HDEL', hash, unpack(stale)) end
  table.sort(live, function(x, y) return x[1] < y[1] end)
  return total, live
end
local function leaves(b) return b * 1000 + span - now end
-- Until no bucket counted now holds anything (admitted requests return leaves(bucket)).
local function reset(live)
  local newest = nil
  for _, item in ipairs(live) do
    if item[2] > 0 and (newest == nil or item[1] > newest) then newest = item[1] end
  end
  if newest == nil then return 0 end
  return leaves(newest)
end
-- Until `need` more fits under `limit`, as the oldest buckets leave the window.
local function fits(live, used, need, limit)
  for _, item in ipairs(live) do
    used = used - item[2]
    if used + need <= limit then return leaves(item[1]) end
  end
  return reset(live)
end

local tokens = tonumber(ARGV[4])
local rpm_limit, tpm_limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local conc_limit, budget_limit = tonumber(ARGV[7]), tonumber(ARGV[8])
local rpm, rpm_live = window(KEYS[3])
local tpm, tpm_live = window(KEYS[4])
local budget = tonumber(redis.call('GET', KEYS[5]) or '0')
local live = redis.call('ZCARD', KEYS[1])

local verdict, retry = 0, 0
if budget_limit >= 0 and budget + tokens > budget_limit then verdict = 4
elseif rpm_limit >= 0 and rpm + 1 > rpm_limit then
  verdict, retry = 1, fits(rpm_live, rpm, 1, rpm_limit)
elseif tpm_limit >= 0 and tpm + tokens > tpm_limit then
  verdict, retry = 2, fits(tpm_live, tpm, tokens, tpm_limit)
elseif conc_limit >= 0 and live + 1 > conc_limit then verdict = 3
end
if verdict ~= 0 then
  return {verdict, rpm, tpm, budget, math.max(reset(rpm_live), reset(tpm_live)), retry}
end

local keep, budget_ttl = tonumber(ARGV[12]), tonumber(ARGV[13])
redis.call('HINCRBY', KEYS[3], bucket, 1)
redis.call('PEXPIRE', KEYS[3], keep)
rpm = rpm + 1
local tpmbucket, budgetkey = '', ''
if tpm_limit >= 0 then
  redis.call('HINCRBY', KEYS[4], bucket, tokens)
  redis.call('PEXPIRE', KEYS[4], keep)
  tpm = tpm + tokens
  tpmbucket = tostring(bucket)
end
if budget_limit >= 0 then
  budget = redis.call('INCRBY', KEYS[5], tokens)
  if budget_ttl > 0 then redis.call('PEXPIRE', KEYS[5], budget_ttl) end
  budgetkey = KEYS[5]
end
local expiry = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expiry, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], tokens .. '|' .. tpmbucket .. '|' .. budgetkey)
redis.call('PEXPIREAT', KEYS[1], expiry + 60000)
redis.call('PEXPIREAT', KEYS[2], expiry + 60000)
return {0, rpm, tpm, budget, leaves(bucket), 0}
"""

# KEYS: leases, held, outbox, tpm buckets, current budget counter, expired
# ARGV: lease id, tokens used, log record JSON ('' for none), charge tpm (0/1),
#       charge budget (0/1), current bucket, bucket hash ttl ms, budget ttl ms
# A lease is charged once: while held, or after its expiry released it (it is then in
# `expired`). Neither means it was settled already: a replay (spool.py) charges nothing.
SETTLE = """
local used = tonumber(ARGV[2])
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  local amount, tpmbucket, budgetkey = string.match(held, '^(%-?%d+)|([^|]*)|(.*)$')
  local diff = used - tonumber(amount)
  if tpmbucket ~= '' and redis.call('HEXISTS', KEYS[4], tpmbucket) == 1 then
    redis.call('HINCRBY', KEYS[4], tpmbucket, diff)
  end
  if budgetkey ~= '' and redis.call('EXISTS', budgetkey) == 1 then
    redis.call('INCRBY', budgetkey, diff)
  end
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
elseif ARGV[1] ~= '' and redis.call('HDEL', KEYS[6], ARGV[1]) == 1 then
  -- The lease expired and its reservation was released: charge the usage now.
  if ARGV[4] == '1' then
    redis.call('HINCRBY', KEYS[4], ARGV[6], used)
    redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[7]))
  end
  if ARGV[5] == '1' then
    redis.call('INCRBY', KEYS[5], used)
    if tonumber(ARGV[8]) > 0 then redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[8])) end
  end
end
if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[3]) end
return 1
"""

# KEYS: outbox, drain lock. ARGV: token, lock ms, batch size.
# The lock and the first `batch` items, or false if another process holds the lock.
DRAIN_TAKE = """
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
if #items == 0 then redis.call('DEL', KEYS[2]) end
return items
"""

# KEYS: outbox, drain lock. ARGV: token.
# Release the lock after a batch that could not be written (nothing is trimmed), only
# while the lock is still ours.
RELEASE_LOCK = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return redis.call('DEL', KEYS[2]) end
return 0
"""

# KEYS: outbox, drain lock, dead letters. ARGV: token, items taken, items the database
# refused for good (kept in the dead-letter list for an operator, never dropped).
# Trims what was taken and releases the lock, only while the lock is still ours.
DRAIN_DONE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if #ARGV > 2 then redis.call('RPUSH', KEYS[3], unpack(ARGV, 3)) end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[2]), -1)
redis.call('DEL', KEYS[2])
return 1
"""


reserve_script = Script(RESERVE.replace("EXPIRED_KEEP_MS", str(EXPIRED_KEEP_MS)))
settle_script = Script(SETTLE)
drain_take_script = Script(DRAIN_TAKE)
drain_done_script = Script(DRAIN_DONE)
release_lock_script = Script(RELEASE_LOCK)
SCRIPTS = (reserve_script, settle_script, drain_take_script, drain_done_script, release_lock_script)


def _keys(key: KeyRecord, clock: Clock) -> list[str]:
    tag = f"gw:{{{key.id}}}"
    budget_window, _ = clock.budget_window(key.budget_period)
    return [
        f"{tag}:leases",
        f"{tag}:held",
        f"{tag}:rpm",
        f"{tag}:tpm",
        f"{tag}:budget:{budget_window}",
        f"{tag}:expired",
    ]


def _pairs(flat: list) -> dict[str, int]:
    """HGETALL's [field, value, ...] as a dict."""
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RespClient] = (
            weakref.WeakKeyDictionary()
        )
        self.drain = LogDrain(self)
        self.replayer = SpoolReplayer(spool(), self._replay)

    def client(self) -> RespClient:
        # One connection per event loop: an asyncio transport is bound to its loop.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = RespClient(self.url, scripts=SCRIPTS)
        return client

    async def reserve(self, key: KeyRecord, tokens: int) -> Decision:
        self.replayer.check_once()
        clock = Clock.read()
        lease_id = uuid.uuid4().hex
        try:
            result = await self._reserve(key, tokens, clock, lease_id)
        except RedisNoAnswer:
            # It may have run with only its answer lost: release the lease if so.
            await self.replayer.keep([settle_entry("redis", key, lease_id, 0, None)])
            raise
        verdict, rpm, tpm, budget, reset_ms, retry_ms = (int(v) for v in result)
        admitted = verdict == Verdict.OK
        return Decision(
            Verdict(verdict),
            rpm,
            tpm,
            budget,
            reset_ms,
            retry_ms,
            lease_id if admitted else None,
        )

    async def _reserve(self, key: KeyRecord, tokens: int, clock: Clock, lease_id: str) -> list:
        _, budget_ttl = clock.budget_window(key.budget_period)
        return await reserve_script(
            self.client(),
            keys=_keys(key, clock),
            args=[
                clock.now_ms,
                lease_id,
                clock.now_ms + int(lease_seconds() * 1000),
                tokens,
                limit_arg(key.rpm_limit),
                limit_arg(key.tpm_limit),
                limit_arg(key.max_concurrency),
                limit_arg(key.budget_tokens),
                clock.bucket,
                clock.oldest_bucket,
                (WINDOW_BUCKETS + 1) * BUCKET_MS,
                WINDOW_KEEP_MS,
                budget_ttl * 1000,
            ],
        )

    async def settle(
        self, key: KeyRecord, lease_id: str | None, tokens: int, log: dict | None
    ) -> None:
        """Issue the settle script; if Redis cannot take it, the log row goes to the
        database directly and the settlement to the spool, replayed when Redis is back."""
        self.replayer.check_once()
        entry = settle_entry("redis", key, lease_id, tokens, log)

        def failed(exc: BaseException) -> None:
            background.spawn(self._settle_failed(entry, exc))

        keys, args = _settle_call(key, lease_id, tokens, log)
        try:
            # Issued, not awaited: see Script.issue. The response goes out after the
            # settlement is on its way to Redis, ahead of anything sent later.
            await settle_script.issue(self.client(), keys=keys, args=args, failed=failed)
        except (RedisConnectionError, RedisReplyError) as exc:
            await self._settle_failed(entry, exc)
            return
        self.drain.kick()

    async def _settle_failed(self, entry: Entry, exc: BaseException) -> None:
        logger.warning("settlement not applied in Redis (%s); spooled", exc)
        if entry["log"] is not None:
            await self._log_direct(entry["log"])
        if entry["lease_id"]:
            await self.replayer.keep([{**entry, "log": None}])

    async def _log_direct(self, record: dict) -> None:
        """Write a record to the database itself (Redis is out), or spool it."""
        try:
            await orm(retry_when_locked(logs_write))([record])
        except DatabaseError:
            await self.replayer.keep([log_entry("redis", record)])

    async def log(self, record: dict) -> None:
        self.replayer.check_once()
        try:
            await self.client().call("RPUSH", OUTBOX, orjson.dumps(record))
        except RedisConnectionError:
            await self._log_direct(record)
            return
        self.drain.kick()

    async def _replay(self, entries: list[Entry]) -> list[Entry]:
        """Apply spooled entries: settlements of this store in Redis, the rest (records,
        the database store's settlements) in the database. Raises while either is out."""
        here = [e for e in entries if e["kind"] == "settle" and e["store"] == "redis"]
        rest = [e for e in entries if not (e["kind"] == "settle" and e["store"] == "redis")]
        refused = await orm(database_replay)(rest) if rest else []
        for entry in here:
            keys, args = _settle_call(
                spooled_key(entry), entry["lease_id"], entry["tokens"], entry["log"]
            )
            await settle_script(self.client(), keys=keys, args=args)
        if any(entry["log"] for entry in here):
            self.drain.kick()
        return refused

    async def ping(self) -> bool:
        try:
            return await self.client().call("PING") == b"PONG"
        except (RedisConnectionError, RedisReplyError):
            return False

    async def snapshot(self, key: KeyRecord) -> Snapshot:
        clock = Clock.read()
        leases, _, rpm, tpm, budget, _ = _keys(key, clock)
        client = self.client()
        rpm_window = Window(_pairs(await client.call("HGETALL", rpm)), clock)
        tpm_window = Window(_pairs(await client.call("HGETALL", tpm)), clock)
        budget_used = int(await client.call("GET", budget) or 0)
        live = await client.call("ZCARD", leases)
        return snapshot_of(key, rpm_window, tpm_window, budget_used, live)


def _settle_call(
    key: KeyRecord, lease_id: str | None, tokens: int, log: dict | None
) -> tuple[list, list]:
    """The settle script's keys and arguments."""
    clock = Clock.read()
    leases, held, _, tpm_key, budget_key, expired = _keys(key, clock)
    _, budget_ttl = clock.budget_window(key.budget_period)
    keys = [leases, held, OUTBOX, tpm_key, budget_key, expired]
    args = [
        lease_id or "",
        tokens,
        orjson.dumps(log) if log is not None else "",
        int(key.tpm_limit is not None),
        int(key.budget_tokens is not None),
        clock.bucket,
        WINDOW_KEEP_MS,
        budget_ttl * 1000,
    ]
    return keys, args


class LogDrain:
    """Moves outbox records into the database, off every request's path.

    The first settlement after a quiet spell schedules one drain
    REQUEST_LOG_DRAIN_SECONDS later, so under load a drain writes a second's
    worth of records in one INSERT instead of a few rows each time. When the
    server shuts down, a scheduled drain runs at once (background.at_shutdown).
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._task: asyncio.Future | None = None
        self._now: asyncio.Event | None = None
        background.at_shutdown(self.flush)

    def kick(self) -> None:
        if self._task is None or self._task.done():
            self._now = asyncio.Event()
            self._task = background.spawn(self._run(self._now))

    def flush(self) -> None:
        if self._now is not None:
            self._now.set()

    async def _run(self, now: asyncio.Event) -> None:
        """Drain after the delay; while the database (or Redis) is out, try again with a
        growing delay until the outbox is written (records stay in Redis meanwhile)."""
        delay = settings.REQUEST_LOG_DRAIN_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(now.wait(), delay)
            try:
                await drain(self.store.client())
                return
            except Exception as exc:
                logger.warning("request-log outbox not drained (%s); records stay in Redis", exc)
            if now.is_set():  # shutting down: the next process (or drainrequestlogs) drains
                return
            delay = min(max(delay, DRAIN_RETRY_FIRST) * 2, DRAIN_RETRY_MAX)


async def drain(client: RespClient) -> int:
    """Drain the outbox until it is empty; return how many records were written."""
    written = 0
    token = secrets.token_hex(8)
    while True:
        items = await drain_take_script(
            client, keys=[OUTBOX, DRAIN_LOCK], args=[token, DRAIN_LOCK_MS, DRAIN_BATCH]
        )
        if items is None:
            if not await client.call("LLEN", OUTBOX):
                return written
            await asyncio.sleep(0.1)  # another process is draining; wait for it
            continue
        if not items:
            return written
        try:
            refused = await orm(logs_write_json)(items)
        except BaseException:
            with contextlib.suppress(Exception):
                await release_lock_script(client, keys=[OUTBOX, DRAIN_LOCK], args=[token])
            raise
        if refused:
            logger.error("%d request-log records refused; kept in %s", len(refused), DEAD_LETTERS)
        await drain_done_script(
            client, keys=[OUTBOX, DRAIN_LOCK, DEAD_LETTERS], args=[token, len(items), *refused]
        )
        written += len(items)
        if len(items) < DRAIN_BATCH:
            return written
