"""Balancing over several Tritons, counted by each Triton itself."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.fleet.conftest import chat

pytestmark = pytest.mark.committed_db

REQUESTS = 300
CONCURRENCY = 8


async def _load(gateway, bodies: list[dict], concurrency: int) -> list[int]:
    queue = list(enumerate(bodies))
    statuses = [0] * len(bodies)
    headers = {"authorization": f"Bearer {gateway.api_key}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, headers=headers) as client:

        async def worker() -> None:
            while queue:
                index, body = queue.pop()
                response = await client.post("/v1/chat/completions", json=body)
                statuses[index] = response.status_code

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_300_requests_at_concurrency_8_spread_evenly_over_3_tritons(fleet, fleet_gateway):
    before = fleet.counts()
    bodies = [chat(f"[[say:balanced {i}]]") for i in range(REQUESTS)]
    statuses = asyncio.run(_load(fleet_gateway, bodies, CONCURRENCY))
    assert statuses == [200] * REQUESTS
    served = [after - earlier for after, earlier in zip(fleet.counts(), before, strict=True)]
    assert sum(served) == REQUESTS  # each request ran once, on one Triton
    share = REQUESTS / len(served)
    for count in served:
        assert abs(count - share) <= 0.15 * share, served


def test_one_request_at_a_time_takes_the_tritons_in_turn(fleet, fleet_gateway):
    """With nothing in flight every endpoint ties: ties go round-robin, never to the first."""
    before = fleet.counts()
    statuses = asyncio.run(_load(fleet_gateway, [chat("[[say:turn]]")] * 30, 1))
    assert statuses == [200] * 30
    served = [after - earlier for after, earlier in zip(fleet.counts(), before, strict=True)]
    assert served == [10, 10, 10]
