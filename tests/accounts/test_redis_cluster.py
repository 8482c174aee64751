"""The Redis store's scripts on a real Redis in Cluster mode: every call is single-slot.

A one-node cluster (redis-server --cluster-enabled, all 16384 slots on it) refuses any
multi-key command or script whose keys hash to different slots (CROSSSLOT), as a
sharded cluster does, but never redirects, so the store's plain client can drive it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from asgiref.sync import sync_to_async

from accounts.quota import Verdict
from llmgateway.devtriton.server import free_port
from tests.accounts.conftest import record
from tests.accounts.test_stores import log, logged

pytestmark = pytest.mark.committed_db


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    home: Path = tmp_path_factory.mktemp("redis-cluster")
    # Cluster's bus listens on port + 10000, so the port must be 55535 or less.
    port = next(p for p in iter(free_port, None) if p <= 55535)
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(home / "nodes.conf"),
            "--dir",
            str(home),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise TimeoutError("the one-node cluster did not come up")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def test_the_cluster_refuses_a_script_over_two_slots(cluster_url):
    """The fixture is a real check: the layout before per-project outboxes fails here."""
    client = redis.Redis.from_url(cluster_url)
    with pytest.raises(redis.ResponseError, match="same slot"):
        client.eval("return 1", 2, "gw:{p1}:k1:rpm", "gw:requestlog:outbox")
    client.close()


async def test_admission_settlement_and_drain_run_on_redis_cluster(cluster_url, settings, make_key):
    from accounts.quota import _store_for
    from accounts.quota import redis_store as module

    settings.REDIS_URL = cluster_url
    store = _store_for(cluster_url)
    key = await sync_to_async(
        lambda: record(make_key(budget_tokens=1000, budget_period="day", rpm_limit=100)[0])
    )()
    request_ids = []
    for i in range(3):
        decision = await store.reserve(key, 40)
        assert decision.verdict is Verdict.OK
        entry = log(i) | {"request_id": f"cluster-{key.id}-{i}"}
        request_ids.append(entry["request_id"])
        await store.settle(key, decision.lease_id, 7, entry)
    client = store.client()
    # The records wait in the project's own outbox, named where the drain looks.
    outbox, _, _ = module.outbox_of(key.project_id)
    assert await client.call("LLEN", outbox) == 3
    assert str(key.project_id).encode() in await client.call("SMEMBERS", module.OUTBOXES)
    assert await module.drain(client) >= 3
    rows = await sync_to_async(logged)(request_ids)
    assert set(rows) == set(request_ids)
    snapshot = await store.snapshot(key)
    assert snapshot.budget_used == 21 and snapshot.rpm_used == 3 and snapshot.leases == 0
    await client.close()
