"""Quota counters in Redis, shared by every replica (REDIS_URL set).

Admission is one Lua script over every subject of the request (the key, the
key's project, and either's limits for the model): it releases expired leases,
checks each one's budgets (tokens, money), requests per minute, tokens per minute
and concurrency, and only if all pass, for every subject, increments them and
records the lease on each. Redis runs a script atomically, so:

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
Every key a script touches shares one hash tag, so every script is a single-slot
call, valid on Redis Cluster: a key's counters, its project's and both per model
(accounts.quota.Subject) carry {p<project id>}, and so does the outbox a settlement
pushes its record onto (`outbox_of`: one outbox per project; a key moved to another
project starts its counters afresh there). The drain walks the outboxes named in
OUTBOXES, which a process fills (SADD, its own command, awaited) before its first
settlement of a project, and the untagged one ({requestlog}: records that settle no
counters). The RESP client itself speaks to one primary (no MOVED redirects yet,
docs/deploy.md). The clock is the gateway's (replicas must run NTP;
skew only shifts bucket boundaries). requests and tokens per minute are sliding
windows of one-second buckets, one hash per key (accounts/quota/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
import weakref
from collections.abc import Callable

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
    Subject,
    Used,
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
from accounts.quota.spool import (
    Entry,
    SpoolReplayer,
    log_entry,
    settle_entry,
    spool,
    spooled_subjects,
)
from accounts.services import KeyRecord
from llmgateway import background
from llmgateway.db import orm
from llmgateway.ids import unique_hex

logger = logging.getLogger(__name__)

# The outbox of records that settle no project's counters (keys without limits, requests
# refused before admission), its drain lock and dead letters: one hash tag, one slot.
OUTBOX = "gw:{requestlog}:outbox"
DEAD_LETTERS = "gw:{requestlog}:dead"
DRAIN_LOCK = "gw:{requestlog}:drain-lock"
# The project tags whose outbox may hold records (the drain walks them).
OUTBOXES = "gw:{requestlog}:outboxes"
REGISTER_SECONDS = 60.0
# Where records waited before outboxes had hash tags: drained too, so an upgrade keeps them.
LEGACY = ("gw:requestlog:outbox", "gw:requestlog:drain-lock", "gw:requestlog:dead")
# How long a lease released on expiry can still be charged by its late settlement.
EXPIRED_KEEP_MS = 86_400_000
DRAIN_BATCH = 500
DRAIN_LOCK_MS = 30_000
# Seconds between drain attempts while the database is out (doubling up to the last).
DRAIN_RETRY_FIRST = 0.5
DRAIN_RETRY_MAX = 5.0
# A bucket hash outlives its newest bucket's window by a few seconds.
WINDOW_KEEP_MS = (WINDOW_BUCKETS + 5) * BUCKET_MS

# Both scripts work over N quota subjects (accounts.quota.Subject: the key, the project,
# either for one model), SUBJECT_KEYS Redis keys each, all under one hash tag.
# Per subject: leases (zset id→expiry ms), held (hash id→"tokens|cost|tpm bucket|budget
# key|money key"), rpm buckets (hash second→count), tpm buckets (hash second→tokens),
# budget counter, money counter, expired (hash: leases released on expiry, not charged yet).
#
# RESERVE ARGV: now ms, lease id, lease expiry ms, tokens, cost (money units), current
#   bucket, oldest counted bucket, ms from a bucket's start until it stops counting,
#   bucket hash ttl ms, number of subjects; then per subject: rpm limit, tpm limit,
#   concurrency limit, token budget, money budget (-1: none), budget ttl ms (0: none).
# Returns {verdict, refusing subject (1-based; 0 when admitted), retry ms, then per
#   subject checked: rpm used, tpm used, budget used, money used, reset ms}.
# Every subject is checked before any is charged: all admit and all are charged, or
# nothing changes but the release of expired leases.
RESERVE = """
local now = tonumber(ARGV[1])
local tokens, cost = tonumber(ARGV[4]), tonumber(ARGV[5])
local bucket, oldest, span = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local keep, n = tonumber(ARGV[9]), tonumber(ARGV[10])
local function parse(held)
  return string.match(held, '^(%-?%d+)|(%-?%d+)|([^|]*)|([^|]*)|(.*)$')
end
local function expire(k)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[k + 1], '-inf', now)
  for _, id in ipairs(expired) do
    local held = redis.call('HGET', KEYS[k + 2], id)
    if held then
      local amount, money, tpmbucket, budgetkey, moneykey = parse(held)
      if tpmbucket ~= '' and redis.call('HEXISTS', KEYS[k + 4], tpmbucket) == 1 then
        redis.call('HINCRBY', KEYS[k + 4], tpmbucket, -tonumber(amount))
      end
      if budgetkey ~= '' and redis.call('EXISTS', budgetkey) == 1 then
        redis.call('DECRBY', budgetkey, amount)
      end
      if moneykey ~= '' and redis.call('EXISTS', moneykey) == 1 then
        redis.call('DECRBY', moneykey, money)
      end
      redis.call('HDEL', KEYS[k + 2], id)
      redis.call('HSET', KEYS[k + 7], id, 1)
      redis.call('PEXPIRE', KEYS[k + 7], EXPIRED_KEEP_MS)
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', now) end
end
-- A sliding window: drop buckets that no longer count, total the rest (oldest first).
local function window(hash)
  local flat = redis.call('HGETALL', hash)
  local total, stale, live = 0, {}, {}
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b < oldest then
      stale[#stale + 1] = flat[i]
    else
      local c = tonumber(flat[i + 1])
      total = total + c
      live[#live + 1] = {b, c}
    end
  end
  if #stale > 0 then redis.call('HDEL', hash, unpack(stale)) end
  table.sort(live, function(x, y) return x[1] < y[1] end)
  return total, live
end
local function leaves(b) return b * 1000 + span - now end
local function reset(live)
  local newest = nil
  for _, item in ipairs(live) do
    if item[2] > 0 and (newest == nil or item[1] > newest) then newest = item[1] end
  end
  if newest == nil then return 0 end
  return leaves(newest)
end
local function fits(live, used, need, limit)
  for _, item in ipairs(live) do
    used = used - item[2]
    if used + need <= limit then return leaves(item[1]) end
  end
  return reset(live)
end

local out = {0, 0, 0}
local state = {}
for i = 1, n do
  local k, a = (i - 1) * SUBJECT_KEYS, 10 + (i - 1) * 6
  expire(k)
  local rpm_limit, tpm_limit = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local conc_limit, budget_limit = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local money_limit = tonumber(ARGV[a + 5])
  local rpm, rpm_live = window(KEYS[k + 3])
  local tpm, tpm_live = window(KEYS[k + 4])
  local budget = tonumber(redis.call('GET', KEYS[k + 5]) or '0')
  local money = tonumber(redis.call('GET', KEYS[k + 6]) or '0')
  local live = redis.call('ZCARD', KEYS[k + 1])
  local verdict, retry = 0, 0
  if budget_limit >= 0 and budget + tokens > budget_limit then verdict = 4
  elseif money_limit >= 0 and money + cost > money_limit then verdict = 5
  elseif rpm_limit >= 0 and rpm + 1 > rpm_limit then
    verdict, retry = 1, fits(rpm_live, rpm, 1, rpm_limit)
  elseif tpm_limit >= 0 and tpm + tokens > tpm_limit then
    verdict, retry = 2, fits(tpm_live, tpm, tokens, tpm_limit)
  elseif conc_limit >= 0 and live + 1 > conc_limit then verdict = 3
  end
  local resets = math.max(reset(rpm_live), reset(tpm_live))
  state[i] = {rpm, tpm, budget, money, resets}
  if verdict ~= 0 then
    out[1], out[2], out[3] = verdict, i, retry
    for _, v in ipairs(state[i]) do out[#out + 1] = v end
    return out
  end
end

local expiry = tonumber(ARGV[3])
for i = 1, n do
  local k, a = (i - 1) * SUBJECT_KEYS, 10 + (i - 1) * 6
  local tpm_limit, budget_limit = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 4])
  local money_limit, budget_ttl = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local s = state[i]
  redis.call('HINCRBY', KEYS[k + 3], bucket, 1)
  redis.call('PEXPIRE', KEYS[k + 3], keep)
  s[1] = s[1] + 1
  local tpmbucket, budgetkey, moneykey = '', '', ''
  if tpm_limit >= 0 then
    redis.call('HINCRBY', KEYS[k + 4], bucket, tokens)
    redis.call('PEXPIRE', KEYS[k + 4], keep)
    s[2] = s[2] + tokens
    tpmbucket = tostring(bucket)
  end
  if budget_limit >= 0 then
    s[3] = redis.call('INCRBY', KEYS[k + 5], tokens)
    if budget_ttl > 0 then redis.call('PEXPIRE', KEYS[k + 5], budget_ttl) end
    budgetkey = KEYS[k + 5]
  end
  if money_limit >= 0 then
    s[4] = redis.call('INCRBY', KEYS[k + 6], cost)
    if budget_ttl > 0 then redis.call('PEXPIRE', KEYS[k + 6], budget_ttl) end
    moneykey = KEYS[k + 6]
  end
  s[5] = leaves(bucket)
  redis.call('ZADD', KEYS[k + 1], expiry, ARGV[2])
  redis.call('HSET', KEYS[k + 2], ARGV[2],
    tokens .. '|' .. cost .. '|' .. tpmbucket .. '|' .. budgetkey .. '|' .. moneykey)
  redis.call('PEXPIREAT', KEYS[k + 1], expiry + 60000)
  redis.call('PEXPIREAT', KEYS[k + 2], expiry + 60000)
  for _, v in ipairs(s) do out[#out + 1] = v end
end
return out
"""

# KEYS: outbox, then SUBJECT_KEYS per subject (as RESERVE).
# ARGV: lease id, tokens used, cost used (money units), log record JSON ('' for none),
#       current bucket, bucket hash ttl ms, number of subjects; then per subject: charge
#       tpm (0/1), charge budget (0/1), charge money (0/1), budget ttl ms.
# A lease is charged once per subject: while held, or after its expiry released it (it
# is then in `expired`). Neither means it was settled already: a replay (spool.py)
# charges nothing.
SETTLE = """
local used, spent = tonumber(ARGV[2]), tonumber(ARGV[3])
local bucket, keep, n = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
for i = 1, n do
  local k, a = 1 + (i - 1) * SUBJECT_KEYS, 7 + (i - 1) * 4
  local held = redis.call('HGET', KEYS[k + 2], ARGV[1])
  if held then
    local amount, money, tpmbucket, budgetkey, moneykey =
      string.match(held, '^(%-?%d+)|(%-?%d+)|([^|]*)|([^|]*)|(.*)$')
    local diff = used - tonumber(amount)
    if tpmbucket ~= '' and redis.call('HEXISTS', KEYS[k + 4], tpmbucket) == 1 then
      redis.call('HINCRBY', KEYS[k + 4], tpmbucket, diff)
    end
    if budgetkey ~= '' and redis.call('EXISTS', budgetkey) == 1 then
      redis.call('INCRBY', budgetkey, diff)
    end
    if moneykey ~= '' and redis.call('EXISTS', moneykey) == 1 then
      redis.call('INCRBY', moneykey, spent - tonumber(money))
    end
    redis.call('HDEL', KEYS[k + 2], ARGV[1])
    redis.call('ZREM', KEYS[k + 1], ARGV[1])
  elseif ARGV[1] ~= '' and redis.call('HDEL', KEYS[k + 7], ARGV[1]) == 1 then
    -- The lease expired and its reservation was released: charge the usage now.
    local ttl = tonumber(ARGV[a + 4])
    if ARGV[a + 1] == '1' then
      redis.call('HINCRBY', KEYS[k + 4], bucket, used)
      redis.call('PEXPIRE', KEYS[k + 4], keep)
    end
    if ARGV[a + 2] == '1' then
      redis.call('INCRBY', KEYS[k + 5], used)
      if ttl > 0 then redis.call('PEXPIRE', KEYS[k + 5], ttl) end
    end
    if ARGV[a + 3] == '1' then
      redis.call('INCRBY', KEYS[k + 6], spent)
      if ttl > 0 then redis.call('PEXPIRE', KEYS[k + 6], ttl) end
    end
  end
end
if ARGV[4] ~= '' then redis.call('RPUSH', KEYS[1], ARGV[4]) end
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


SUBJECT_KEYS = 7
reserve_script = Script(
    RESERVE.replace("EXPIRED_KEEP_MS", str(EXPIRED_KEEP_MS)).replace(
        "SUBJECT_KEYS", str(SUBJECT_KEYS)
    )
)
settle_script = Script(SETTLE.replace("SUBJECT_KEYS", str(SUBJECT_KEYS)))
drain_take_script = Script(DRAIN_TAKE)
drain_done_script = Script(DRAIN_DONE)
release_lock_script = Script(RELEASE_LOCK)
SCRIPTS = (reserve_script, settle_script, drain_take_script, drain_done_script, release_lock_script)


def _keys(subject: Subject, clock: Clock) -> tuple[str, ...]:
    """A subject's Redis keys. Every subject of a project (its own, its keys', per model)
    shares the hash tag {p<project id>}: a project's counters live on one slot, so one
    script over all of them is a single-slot call."""
    budget_window, _ = clock.budget_window(subject.budget_period)
    return _keys_of(subject.tag, subject.name, budget_window)


def _subjects_call(
    keys: list,
    args: list,
    subjects: tuple[Subject, ...],
    clock: Clock,
    per_subject: Callable[[Subject], list],
) -> tuple[list, list]:
    """A script call's keys and arguments: `keys` and `args` (the head), then for each
    subject its keys, and its `per_subject(subject)` arguments followed by how long its
    budget counters are kept (ms). The reserve and settle scripts read them alike."""
    for subject in subjects:
        budget_window, budget_ttl = clock.budget_window(subject.budget_period)
        keys += _keys_of(subject.tag, subject.name, budget_window)
        args += per_subject(subject)
        args.append(budget_ttl * 1000)
    return keys, args


@functools.lru_cache(maxsize=1024)
def _keys_of(tag: int, name: str, budget_window: str) -> tuple[str, ...]:
    """Made once per subject and budget window (a tuple: the cache hands out one
    object to every caller)."""
    prefix = f"gw:{{p{tag}}}:{name}"
    return (
        f"{prefix}:leases",
        f"{prefix}:held",
        f"{prefix}:rpm",
        f"{prefix}:tpm",
        f"{prefix}:budget:{budget_window}",
        f"{prefix}:money:{budget_window}",
        f"{prefix}:expired",
    )


def outbox_of(tag: int | None) -> tuple[str, str, str]:
    """(outbox, drain lock, dead letters) of a project tag (None: the untagged records).

    A settlement pushes its log record onto the outbox of its subjects' hash tag, in the
    same script as the counters: one slot, so the script is valid on Redis Cluster."""
    if tag is None:
        return OUTBOX, DRAIN_LOCK, DEAD_LETTERS
    prefix = f"gw:{{p{tag}}}:requestlog"
    return f"{prefix}:outbox", f"{prefix}:drain-lock", f"{prefix}:dead"


def _pairs(flat: list) -> dict[str, int]:
    """HGETALL's [field, value, ...] as a dict."""
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _reserve_call(
    subjects: tuple[Subject, ...], tokens: int, cost: int, clock: Clock, lease_id: str
) -> tuple[list, list]:
    """The reserve script's keys and arguments."""
    head: list = [
        clock.now_ms,
        lease_id,
        clock.now_ms + int(lease_seconds() * 1000),
        tokens,
        cost,
        clock.bucket,
        clock.oldest_bucket,
        (WINDOW_BUCKETS + 1) * BUCKET_MS,
        WINDOW_KEEP_MS,
        len(subjects),
    ]
    return _subjects_call([], head, subjects, clock, _limits)


def _limits(subject: Subject) -> list:
    return [
        limit_arg(subject.rpm_limit),
        limit_arg(subject.tpm_limit),
        limit_arg(subject.max_concurrency),
        limit_arg(subject.budget_tokens),
        limit_arg(subject.budget_money),
    ]


def _decision(result: list, subjects: tuple[Subject, ...], lease_id: str) -> Decision:
    """The reserve script's reply as a Decision."""
    values = [int(v) for v in result]
    verdict, who, retry_ms = Verdict(values[0]), values[1], values[2]
    used = [Used(*values[i : i + 5]) for i in range(3, len(values), 5)]
    if verdict is Verdict.OK:
        return Decision.of(verdict, subjects, used, 0, 0, lease_id)
    # Only the refusing subject's counters come back: report those.
    refused = subjects[who - 1 :] + subjects[: who - 1]
    return Decision.of(verdict, refused, used, 0, retry_ms, None)


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RespClient] = (
            weakref.WeakKeyDictionary()
        )
        self.drain = LogDrain(self)
        self.replayer = SpoolReplayer(spool(), self._replay)
        self._registered: dict[int, float] = {}  # project tag -> when its outbox was named

    def client(self) -> RespClient:
        # One connection per event loop: an asyncio transport is bound to its loop.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = RespClient(self.url, scripts=SCRIPTS)
        return client

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
        lease_id = unique_hex()
        keys, args = _reserve_call(subjects, tokens, cost, Clock.read(), lease_id)
        try:
            result = await reserve_script(self.client(), keys=keys, args=args)
        except RedisNoAnswer:
            await self._lease_unknown(key, lease_id, subjects)
            raise
        return _decision(result, subjects, lease_id)

    def reserve_soon(
        self,
        key: KeyRecord,
        tokens: int,
        *,
        subjects: tuple[Subject, ...] | None = None,
        cost: int = 0,
    ) -> asyncio.Future | None:
        """`reserve` without a task or coroutine: its decision as a future, made by a
        callback when the reply arrives (the request path's admission; a task and its
        four frames cost more than the rest of the call). None when the connection
        must be opened first: then use `reserve`. A decision it cannot make (the script
        unknown to Redis, a lost answer) is left to `reserve`'s own handling."""
        self.replayer.check_once()
        subjects = key.subjects() if subjects is None else subjects
        lease_id = unique_hex()
        keys, args = _reserve_call(subjects, tokens, cost, Clock.read(), lease_id)
        client = self.client()
        raw = client.send_soon("EVALSHA", reserve_script.sha, len(keys), *keys, *args)
        if raw is None:
            return None
        decided = asyncio.get_running_loop().create_future()

        async def slow() -> None:
            try:
                if isinstance(raw.exception(), RedisNoAnswer):
                    raise raw.exception()
                # NOSCRIPT (Redis lost its scripts): EVAL runs it with the same lease.
                result = await reserve_script(client, keys=keys, args=args)
                decided.set_result(_decision(result, subjects, lease_id))
            except RedisNoAnswer as exc:
                try:
                    await self._lease_unknown(key, lease_id, subjects)
                finally:
                    decided.set_exception(exc)
            except Exception as exc:
                decided.set_exception(exc)

        def answered(raw: asyncio.Future) -> None:
            if raw.cancelled():
                decided.cancel()
                return
            exc = raw.exception()
            if exc is None:
                try:
                    decided.set_result(_decision(raw.result(), subjects, lease_id))
                except Exception as bad:  # a malformed reply: fail like any store error
                    decided.set_exception(bad)
            elif isinstance(exc, RedisNoAnswer) or (
                isinstance(exc, RedisReplyError) and str(exc).startswith("NOSCRIPT")
            ):
                background.spawn(slow())
            else:
                decided.set_exception(exc)

        raw.add_done_callback(answered)
        return decided

    async def _lease_unknown(
        self, key: KeyRecord, lease_id: str, subjects: tuple[Subject, ...]
    ) -> None:
        """A reservation whose answer was lost may have run: release its lease if so."""
        entry = settle_entry("redis", key, lease_id, 0, None, subjects=subjects)
        await self.replayer.keep([entry])

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
        """Issue the settle script; if Redis cannot take it, the log row goes to the
        database directly and the settlement to the spool, replayed when Redis is back."""
        self.replayer.check_once()
        subjects = key.subjects() if subjects is None else subjects
        keys, args = _settle_call(subjects, lease_id, tokens, cost, log)
        failed = self._settle_failure(key, lease_id, tokens, log, subjects, cost)
        try:
            await self._register(subjects)
            # Issued, not awaited: see Script.issue. The response goes out after the
            # settlement is on its way to Redis, ahead of anything sent later.
            await settle_script.issue(self.client(), keys=keys, args=args, failed=failed)
        except (RedisConnectionError, RedisReplyError) as exc:
            await self._settle_failed(
                settle_entry("redis", key, lease_id, tokens, log, subjects=subjects, cost=cost),
                exc,
            )
            return
        self.drain.kick()

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
        """`settle` without a suspension, where it needs none (the request path's
        settlement, which then costs no task and no extra turn of the loop): the
        connection is open and the subjects' outbox was named lately. False, with
        nothing sent, otherwise: then call `settle`."""
        self.replayer.check_once()
        subjects = key.subjects() if subjects is None else subjects
        if not self._named(subjects):
            return False
        keys, args = _settle_call(subjects, lease_id, tokens, cost, log)
        failed = self._settle_failure(key, lease_id, tokens, log, subjects, cost)
        if not settle_script.issue_now(self.client(), keys=keys, args=args, failed=failed):
            return False
        self.drain.kick()
        return True

    def _settle_failure(
        self,
        key: KeyRecord,
        lease_id: str | None,
        tokens: int,
        log: dict | None,
        subjects: tuple[Subject, ...],
        cost: int,
    ) -> Callable[[BaseException], None]:
        """What to do when an issued settlement fails with its reply (see Script.issue)."""

        def failed(exc: BaseException) -> None:
            # The spool entry is built only now: not on every request.
            entry = settle_entry("redis", key, lease_id, tokens, log, subjects=subjects, cost=cost)
            background.spawn(self._settle_failed(entry, exc))

        return failed

    def _named(self, subjects: tuple[Subject, ...]) -> bool:
        """Whether the subjects' project outbox was named in OUTBOXES lately (see
        `_register`)."""
        if not subjects:
            return True
        return time.monotonic() - self._registered.get(subjects[0].tag, -REGISTER_SECONDS) < (
            REGISTER_SECONDS
        )

    async def _register(self, subjects: tuple[Subject, ...]) -> None:
        """Name the subjects' project outbox in OUTBOXES, where the drain looks, before a
        record can be pushed onto it (another slot: its own command, awaited first).
        Once per tag and REGISTER_SECONDS per process; repeated so that a Redis that lost
        its data while this process ran learns the outbox again."""
        if self._named(subjects):
            return
        now = time.monotonic()
        await self.client().call("SADD", OUTBOXES, subjects[0].tag)
        self._registered[subjects[0].tag] = now

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
        except (RedisConnectionError, RedisReplyError) as exc:
            # An error reply (LOADING right after a restart, OOM, READONLY on a replica)
            # means the record is not in Redis either: write it directly, as settlement
            # does, rather than let the caller drop it.
            logger.warning("request log not pushed to Redis (%s); written directly", exc)
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
            await self._register(spooled_subjects(entry))
            keys, args = _settle_call(
                spooled_subjects(entry),
                entry["lease_id"],
                entry["tokens"],
                entry.get("cost", 0),
                entry["log"],
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

    async def snapshot(self, key: KeyRecord, subject: Subject | None = None) -> Snapshot:
        clock = Clock.read()
        subject = subject or key.key_subject()
        leases, _, rpm, tpm, budget, money, _ = _keys(subject, clock)
        client = self.client()
        rpm_window = Window(_pairs(await client.call("HGETALL", rpm)), clock)
        tpm_window = Window(_pairs(await client.call("HGETALL", tpm)), clock)
        budget_used = int(await client.call("GET", budget) or 0)
        money_used = int(await client.call("GET", money) or 0)
        live = await client.call("ZCARD", leases)
        return snapshot_of(subject, rpm_window, tpm_window, budget_used, live, money_used)


def _settle_call(
    subjects: tuple[Subject, ...], lease_id: str | None, tokens: int, cost: int, log: dict | None
) -> tuple[list, list]:
    """The settle script's keys and arguments."""
    clock = Clock.read()
    head: list = [
        lease_id or "",
        tokens,
        cost,
        orjson.dumps(log) if log is not None else "",
        clock.bucket,
        WINDOW_KEEP_MS,
        len(subjects),
    ]
    outbox = outbox_of(subjects[0].tag if subjects else None)[0]
    return _subjects_call([outbox], head, subjects, clock, _counted)


def _counted(subject: Subject) -> list:
    """Which of a subject's counters a settlement charges: tpm, token and money budgets."""
    return [
        int(subject.tpm_limit is not None),
        int(subject.budget_tokens is not None),
        int(subject.budget_money is not None),
    ]


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
        # A record pushed since the running drain last looked: that drain may already
        # have taken its last batch, so it must look again before it ends.
        self._again = False
        background.at_shutdown(self.flush)

    def kick(self) -> None:
        self._again = True
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
            self._again = False
            try:
                await drain(self.store.client())
            except Exception as exc:
                logger.warning("request-log outbox not drained (%s); records stay in Redis", exc)
            else:
                if not self._again:
                    return
                # Pushed while this drain ran, perhaps after its last take: they would
                # wait in Redis for the next request's kick, which may never come.
                delay = settings.REQUEST_LOG_DRAIN_SECONDS
                continue
            if now.is_set():  # shutting down: the next process (or drainrequestlogs) drains
                return
            delay = min(max(delay, DRAIN_RETRY_FIRST) * 2, DRAIN_RETRY_MAX)


async def drain(client: RespClient) -> int:
    """Drain every outbox until empty; return how many records were written."""
    tags = sorted(int(t) for t in await client.call("SMEMBERS", OUTBOXES))
    boxes = [outbox_of(None), *(outbox_of(tag) for tag in tags)]
    # Its three keys are on different slots: only where it exists (an upgraded Redis,
    # never a cluster, which the old layout could not run on).
    if await client.call("EXISTS", LEGACY[0]):
        boxes.append(LEGACY)
    written = 0
    for box in boxes:
        written += await drain_outbox(client, *box)
    return written


async def drain_outbox(client: RespClient, outbox: str, lock: str, dead: str) -> int:
    """Drain one outbox until it is empty; return how many records were written."""
    written = 0
    token = secrets.token_hex(8)
    while True:
        items = await drain_take_script(
            client, keys=[outbox, lock], args=[token, DRAIN_LOCK_MS, DRAIN_BATCH]
        )
        if items is None:
            if not await client.call("LLEN", outbox):
                return written
            await asyncio.sleep(0.1)  # another process is draining; wait for it
            continue
        if not items:
            return written
        try:
            refused = await orm(logs_write_json)(items)
        except BaseException:
            with contextlib.suppress(Exception):
                await release_lock_script(client, keys=[outbox, lock], args=[token])
            raise
        if refused:
            logger.error("%d request-log records refused; kept in %s", len(refused), dead)
        await drain_done_script(
            client, keys=[outbox, lock, dead], args=[token, len(items), *refused]
        )
        written += len(items)
        if len(items) < DRAIN_BATCH:
            return written
