"""Two gateway processes, sharing the database and Redis, in front of two Tritons: one
key's token budget holds over 150 concurrent requests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from asgiref.sync import async_to_sync

from accounts.models import RequestLog
from tests.accounts.conftest import wait_for_logs
from tests.conftest import LiveGateway, start_gateway, stop_gateway
from tests.fleet.conftest import REDIS_TEST_URL, fleet_model_upsert

pytestmark = pytest.mark.committed_db

PAIR_MODEL = "fleet-pair"
REQUESTS = 150
BUDGET = 2000


@pytest.fixture
def pair(fleet, committed, tmp_path) -> Iterator[tuple[LiveGateway, LiveGateway]]:
    """Two gateways with REDIS_URL set, serving PAIR_MODEL from the first two Tritons."""
    try:
        # Key ids start again in each test database: counters left by an earlier run go.
        redis.Redis.from_url(REDIS_TEST_URL).flushdb()
    except redis.ConnectionError:
        pytest.skip(f"Redis is not reachable at {REDIS_TEST_URL}")
    fleet_model_upsert(PAIR_MODEL, fleet.addresses(2))
    gateways = [start_gateway(tmp_path, {"REDIS_URL": REDIS_TEST_URL}) for _ in range(2)]
    try:
        yield tuple(gateways)
    finally:
        for gateway in gateways:
            stop_gateway(gateway)


def _send_all(pair, secret: str, prefix: str) -> list[httpx.Response]:
    """REQUESTS at once, alternating between the two gateways."""

    async def main() -> list[httpx.Response]:
        headers = {"authorization": f"Bearer {secret}"}
        clients = [httpx.AsyncClient(base_url=g.url, timeout=60, headers=headers) for g in pair]
        body = {"model": PAIR_MODEL, "prompt": "[[long:20]]", "max_output_len": 40}
        try:
            return await asyncio.gather(
                *(
                    clients[i % 2].post(
                        "/generate", json=body, headers={"x-request-id": f"{prefix}-{i}"}
                    )
                    for i in range(REQUESTS)
                )
            )
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(main())


def test_one_budget_holds_across_two_gateways_and_two_tritons(pair, fleet):
    from accounts.quota import _store_for
    from accounts.services import KeyRecord, key_create, owner_get_or_create

    key, secret = key_create(
        owner=owner_get_or_create(username="fleet-tests"),
        name=f"fleet budget {uuid.uuid4().hex[:6]}",
        budget_tokens=BUDGET,
        budget_period="day",
    )
    prefix = f"fleet-budget-{uuid.uuid4().hex[:6]}"
    before = fleet.counts()
    responses = _send_all(pair, secret, prefix)
    served_by = [after - earlier for after, earlier in zip(fleet.counts(), before, strict=True)]

    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, set(statuses)
    refused = [r for r in responses if r.status_code == 429]
    assert {r.json()["error"]["code"] for r in refused} == {"insufficient_quota"}
    rows = RequestLog.objects.filter(request_id__startswith=prefix + "-")
    assert wait_for_logs(rows.count, REQUESTS) == REQUESTS
    served = sum(row.total_tokens for row in rows.filter(status=200))
    assert 0 < served <= BUDGET
    key.refresh_from_db()
    usage = async_to_sync(_store_for(REDIS_TEST_URL).snapshot)(KeyRecord.from_row(key))
    assert usage.budget_used == served and usage.leases == 0
    # Both Tritons did the work; the third, not in this model's list, none of it.
    assert served_by[0] > 0 and served_by[1] > 0 and served_by[2] == 0
    # (Refused requests may have reached a Triton too: QUOTA_EARLY_START, cancelled there.)
    assert sum(served_by) >= statuses.count(200)
