"""The spool (accounts/quota/spool.py): entries survive their process and apply once."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import textwrap

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from accounts.models import RequestLog
from accounts.quota.spool import Spool, log_entry, settle_entry, spool_replay
from tests.accounts.test_stores import log, new_key
from tests.conftest import ROOT

pytestmark = pytest.mark.committed_db


async def applied_by(store, entries: list[dict], tmp_path) -> bool:
    """Spool `entries` in a fresh directory, then replay them with `store`'s apply."""
    spool = Spool(tmp_path / "spool")
    spool.append(entries)
    return await spool_replay(spool, store.replayer.apply)


async def test_a_settlement_replayed_twice_is_charged_once(store, make_key, tmp_path):
    key = await new_key(make_key, budget_tokens=1000, budget_period="total")
    decision = await store.reserve(key, 100)
    record = log(7)
    name = "redis" if hasattr(store, "drain") else "database"
    entry = settle_entry(name, key, decision.lease_id, 40, record)
    # The same settlement three times: the first try, and two replays of it.
    assert await applied_by(store, [entry], tmp_path / "a")
    assert await applied_by(store, [entry, entry], tmp_path / "b")
    snapshot = await store.snapshot(key)
    assert (snapshot.budget_used, snapshot.leases) == (40, 0)
    if name == "redis":
        from accounts.quota.redis_store import drain

        await drain(store.client())  # the outbox, now rather than after its delay
    rows = await sync_to_async(RequestLog.objects.filter(log_id=record["log_id"]).count)()
    assert rows == 1


async def test_a_release_of_an_uncertain_admission_gives_the_reservation_back(
    store, make_key, tmp_path
):
    key = await new_key(make_key, budget_tokens=1000, budget_period="total")
    decision = await store.reserve(key, 100)  # its answer "lost": released by the spool
    name = "redis" if hasattr(store, "drain") else "database"
    release = settle_entry(name, key, decision.lease_id, 0, None)
    assert await applied_by(store, [release, release], tmp_path)
    snapshot = await store.snapshot(key)
    assert (snapshot.budget_used, snapshot.leases) == (0, 0)


async def test_records_refused_for_good_go_to_dead_letters(settings, committed, tmp_path):
    from accounts.quota import _store_for

    settings.REDIS_URL = ""
    store = _store_for("")
    good, bad, malformed = log(1), log(2), log(3)
    bad["status"] = -5  # a PositiveSmallIntegerField: PostgreSQL refuses it
    malformed["no_such_column"] = 1  # e.g. a record from another version
    spool = Spool(tmp_path)
    entries = [log_entry("database", record) for record in (good, bad, malformed)]
    spool.append(entries)
    assert await spool_replay(spool, store.replayer.apply)
    assert await sync_to_async(RequestLog.objects.filter(log_id=good["log_id"]).exists)()
    assert not list(tmp_path.glob("spool-*.jsonl"))
    (dead,) = tmp_path.glob("dead-*.jsonl")
    assert malformed["log_id"] in dead.read_text()
    if connection.vendor == "postgresql":  # SQLite's INSERT OR IGNORE skips CHECK failures
        assert bad["log_id"] in dead.read_text()


def test_a_dead_process_file_is_replayed_and_a_live_one_is_not(tmp_path):
    live = tmp_path / "spool-1-live.jsonl"
    live.write_text('{"kind": "log"}\n')
    holder = live.open("rb")
    fcntl.flock(holder, fcntl.LOCK_EX)  # a live process holds its file
    # A process that wrote and died: its lock went with it.
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from accounts.quota.spool import Spool
        Spool(Path({str(tmp_path)!r})).append([{{"kind": "log", "n": 1}}])
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    spool = Spool(tmp_path)
    claimed = spool.claim()
    try:
        assert [path for path, _ in claimed] != []
        assert live not in [path for path, _ in claimed]
        (orphan,) = [path for path, _ in claimed]
        assert '"n":1' in orphan.read_text()
    finally:
        for _, handle in claimed:
            handle.close()
        holder.close()
