"""Quotas end to end: two gateway processes per store enforce one limit together."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest
import redis
from asgiref.sync import async_to_sync

from accounts.models import RequestLog
from tests.accounts.conftest import (
    BACKENDS,
    bearer,
    record,
    redis_env,
    wait_for_logs,
)
from tests.conftest import CHAT_MODEL, start_gateway, stop_gateway

pytestmark = pytest.mark.committed_db


def spread(pair, secret: str, bodies: list[dict], prefix: str) -> list[httpx.Response]:
    """Send every body at once, alternating between the two processes."""

    async def main() -> list[httpx.Response]:
        clients = [
            httpx.AsyncClient(base_url=g.url, timeout=60, headers=bearer(secret)) for g in pair
        ]
        try:
            return await asyncio.gather(
                *(
                    clients[i % 2].post(
                        "/generate", json=body, headers={"x-request-id": f"{prefix}-{i}"}
                    )
                    for i, body in enumerate(bodies)
                )
            )
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(main())


def logs(prefix: str):
    return RequestLog.objects.filter(request_id__startswith=prefix + "-")


def snapshot(key, backend: str, settings):
    from accounts.quota import _store_for

    store = _store_for(redis_env(backend)["REDIS_URL"])
    return async_to_sync(store.snapshot)(record(key))


@pytest.mark.parametrize("backend", BACKENDS)
def test_100_concurrent_requests_across_two_processes_never_exceed_the_budget(
    backend, make_key, gateway_pairs, settings
):
    budget = 1500
    key, secret = make_key(budget_tokens=budget, budget_period="day")
    prefix = f"budget-{backend}-{uuid.uuid4().hex[:6]}"
    # Each reserves its prompt + 40 tokens and uses about half of the output.
    bodies = [
        {"model": CHAT_MODEL, "prompt": "[[long:20]]", "max_output_len": 40} for _ in range(100)
    ]
    responses = spread(gateway_pairs(backend), secret, bodies, prefix)
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}
    refused = [r for r in responses if r.status_code == 429]
    assert {r.json()["error"]["code"] for r in refused} == {"insufficient_quota"}
    assert {r.headers["x-should-retry"] for r in refused} == {"false"}
    assert wait_for_logs(lambda: logs(prefix).count(), 100) == 100
    served = sum(row.total_tokens for row in logs(prefix).filter(status=200))
    assert served <= budget
    usage = snapshot(key, backend, settings)
    assert usage.budget_used == served and usage.leases == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_rpm_across_two_processes_lets_exactly_the_limit_through(backend, make_key, gateway_pairs):
    _, secret = make_key(rpm_limit=10)
    prefix = f"rpm-{backend}-{uuid.uuid4().hex[:6]}"
    bodies = [{"model": CHAT_MODEL, "prompt": "[[say:hi]]"} for _ in range(40)]
    responses = spread(gateway_pairs(backend), secret, bodies, prefix)
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) == 10 and len(limited) == 30
    for response in limited:
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        # The oldest counted request leaves the sliding window within 61 s.
        assert 1 <= int(response.headers["retry-after"]) <= 61
        assert 0 < int(response.headers["retry-after-ms"]) <= 61_000
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(10))
    for response in ok:
        assert response.headers["x-ratelimit-limit-requests"] == "10"
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_concurrency_limit_holds_across_two_processes(backend, make_key, gateway_pairs):
    _, secret = make_key(max_concurrency=3)
    prefix = f"conc-{backend}-{uuid.uuid4().hex[:6]}"
    slow = {"model": CHAT_MODEL, "prompt": "[[delay:100]][[long:8]]"}
    responses = spread(gateway_pairs(backend), secret, [slow] * 12, prefix)
    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 9
    # All released: the next three run.
    responses = spread(gateway_pairs(backend), secret, [slow] * 3, prefix + "b")
    assert [r.status_code for r in responses] == [200] * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_client_that_disconnects_mid_stream_is_charged_what_it_was_sent(
    backend, make_key, gateway_pairs, devtriton, settings
):
    key, secret = make_key(budget_tokens=100_000, tpm_limit=100_000, max_concurrency=5)
    request_id = f"disc-{backend}-{uuid.uuid4().hex[:6]}"
    gateway = gateway_pairs(backend)[0]
    received = 0
    with (
        gateway.client(api_key=secret) as client,
        client.stream(
            "POST",
            "/generate",
            json={"model": CHAT_MODEL, "prompt": "[[delay:30]][[long:400]]", "stream": True},
            headers={"x-request-id": request_id},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-tokens"] == "100000"
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text":""' not in line:
                received += 1
                if received == 5:
                    break
    event = devtriton.wait_for_event("cancelled", request_id, timeout=10)
    assert wait_for_logs(lambda: RequestLog.objects.filter(request_id=request_id).count(), 1)
    row = RequestLog.objects.get(request_id=request_id)
    assert row.cancelled and row.status == 499 and row.streamed
    assert received <= row.completion_tokens <= event["tokens_sent"] < 400
    usage = snapshot(key, backend, settings)
    assert usage.budget_used == row.total_tokens == usage.tpm_used
    assert usage.leases == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_processs_reservation_expires(
    backend, make_key, gateway_pairs, owner_key, tmp_path, settings
):
    key, secret = make_key(max_concurrency=1, budget_tokens=10_000, budget_period="total")
    # Long enough that the "still held" check below cannot race the expiry on a busy
    # machine, short enough to keep the test quick.
    lease = 5
    doomed = start_gateway(tmp_path, {**redis_env(backend), "QUOTA_LEASE_SECONDS": str(lease)})
    survivor = gateway_pairs(backend)[0]
    body = {"model": CHAT_MODEL, "prompt": "[[delay:100]][[long:200]]", "stream": True}
    try:
        with (
            doomed.client(api_key=secret) as client,
            client.stream("POST", "/generate", json=body) as response,
        ):
            assert response.status_code == 200
            # Keep the iterator referenced until the kill: a discarded one is collected,
            # which closes the connection, and the gateway would settle the disconnect.
            lines = response.iter_lines()
            next(lines)
            doomed.process.send_signal(signal.SIGKILL)
            doomed.process.wait(10)
    except httpx.HTTPError:
        pass
    finally:
        stop_gateway(doomed)
    killed_at = time.monotonic()
    quick = {"model": CHAT_MODEL, "prompt": "[[say:hi]]"}
    with survivor.client(api_key=secret) as client:
        held = client.post("/generate", json=quick)
        assert held.status_code == 429  # the dead request still holds the only slot
        assert held.json()["error"]["code"] == "rate_limit_exceeded"
        assert snapshot(key, backend, settings).budget_used > 200
        while (status := client.post("/generate", json=quick).status_code) == 429:
            assert time.monotonic() - killed_at < lease + 3
            time.sleep(0.2)
        assert status == 200
    assert snapshot(key, backend, settings).budget_used < 100  # only the last request


@pytest.mark.parametrize("backend", BACKENDS)
def test_request_log_rows_equal_requests_sent(backend, make_key, gateway_pairs):
    """Under load with successes, refusals, Triton errors and disconnects mixed in."""
    _, secret = make_key(rpm_limit=30)
    _, other = make_key()
    prefix = f"load-{backend}-{uuid.uuid4().hex[:6]}"
    pair = gateway_pairs(backend)
    kinds = ["ok", "ok", "ok", "nokey", "badmodel", "badjson", "error", "disconnect", "stream"]

    async def main() -> int:
        sent = 0
        clients = [httpx.AsyncClient(base_url=g.url, timeout=60) for g in pair]

        async def send(i: int, kind: str) -> None:
            client = clients[i % 2]
            headers = {"x-request-id": f"{prefix}-{i}", **bearer(secret)}
            body = {"model": CHAT_MODEL, "prompt": "[[say:hello there]]"}
            if kind == "nokey":
                del headers["authorization"]
            elif kind == "badmodel":
                body["model"] = "missing"
            elif kind == "badjson":
                await client.post("/generate", content=b"{", headers=headers)
                return
            elif kind == "error":
                body["prompt"] = "[[long:10]][[error:3]]"
                headers.update(bearer(other))
            elif kind == "disconnect":
                body.update(prompt="[[delay:50]][[long:100]]", stream=True)
                headers.update(bearer(other))
                async with client.stream("POST", "/generate", json=body, headers=headers) as r:
                    async for _ in r.aiter_lines():
                        break
                return
            elif kind == "stream":
                body["stream"] = True
                headers.update(bearer(other))
            await client.post("/generate", json=body, headers=headers)

        tasks = []
        for i in range(90):  # 30 "ok" against rpm 30 plus the rpm-free kinds, then 10 over
            tasks.append(send(i, kinds[i % len(kinds)]))
        tasks += [send(90 + i, "ok") for i in range(10)]
        sent = len(tasks)
        await asyncio.gather(*tasks)
        for client in clients:
            await client.aclose()
        return sent

    sent = asyncio.run(main())
    # Requests without a key are counted per minute and address, not logged one by one
    # (tests/accounts/test_refusals.py): every other request has its row.
    keyless = sum(1 for i in range(90) if kinds[i % len(kinds)] == "nokey")
    logged = sent - keyless
    assert wait_for_logs(lambda: logs(prefix).count(), logged, timeout=20) == logged
    time.sleep(0.5)
    assert logs(prefix).count() == logged  # and no duplicates arrive late
    statuses = set(logs(prefix).values_list("status", flat=True))
    assert {200, 400, 404, 429, 499, 500} <= statuses
    assert 401 not in statuses


def test_a_graceful_stop_writes_the_outbox_before_the_process_exits(make_key, redis_url, tmp_path):
    """The drain is scheduled 60 s out; stopping the gateway must flush it now."""
    _, secret = make_key()
    gateway = start_gateway(tmp_path, {**redis_env("redis"), "REQUEST_LOG_DRAIN_SECONDS": "60"})
    request_id = f"flush-{uuid.uuid4().hex}"
    try:
        with gateway.client(api_key=secret) as client:
            response = client.post(
                "/generate",
                json={"model": CHAT_MODEL, "prompt": "[[say:kept]]"},
                headers={"x-request-id": request_id},
            )
            assert response.status_code == 200
        time.sleep(0.3)
        assert not RequestLog.objects.filter(request_id=request_id).exists()  # still queued
    finally:
        stop_gateway(gateway)
    assert gateway.process.returncode is not None
    assert RequestLog.objects.filter(request_id=request_id).count() == 1, gateway.log_tail()


def _events_for(devtriton, request_id: str) -> list[str]:
    return [e["event"] for e in devtriton.events() if e.get("request_id") == request_id]


def test_an_early_started_request_is_cancelled_when_refused(
    make_key, gateway_pairs, devtriton, settings, redis_url
):
    """A key in good standing reaches Triton while Redis decides; a refusal cancels it there.

    CLIENT PAUSE holds Redis's answer long enough that the early start is certain to
    reach the model before the verdict, so the test does not depend on timing.
    """
    key, secret = make_key(max_concurrency=1, budget_tokens=100_000, budget_period="total")
    gateway = gateway_pairs("redis")[0]
    quick = {"model": CHAT_MODEL, "prompt": "[[say:hi]]"}
    slow = {"model": CHAT_MODEL, "prompt": "[[delay:100]][[long:50]]"}
    tag = uuid.uuid4().hex[:6]
    store = redis.Redis.from_url(redis_url)
    with gateway.client(api_key=secret) as client:
        assert client.post("/generate", json=quick).status_code == 200  # now in good standing
        with client.stream("POST", "/generate", json={**slow, "stream": True}) as held:
            lines = held.iter_lines()
            next(lines)  # holds the key's only slot
            store.execute_command("CLIENT", "PAUSE", 500, "WRITE")
            refused = client.post("/generate", json=slow, headers={"x-request-id": f"early-{tag}"})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            # It reached the model during the pause, and the refusal cancelled it there.
            assert devtriton.wait_for_event("start", f"early-{tag}")
            cancelled = devtriton.wait_for_event("cancelled", f"early-{tag}")
            assert cancelled["tokens_sent"] < 50  # stopped well before its 50 tokens
            # The last decision refused: the next request waits for Redis, Triton never sees it.
            store.execute_command("CLIENT", "PAUSE", 300, "WRITE")
            later = client.post("/generate", json=slow, headers={"x-request-id": f"late-{tag}"})
            assert later.status_code == 429
    usage = snapshot(key, "redis", settings)
    assert usage.rpm_used == 2 and usage.leases == 0  # the refusals took nothing
    time.sleep(0.5)
    assert _events_for(devtriton, f"late-{tag}") == []
    assert "finished" not in _events_for(devtriton, f"early-{tag}")


def test_quota_early_start_off_keeps_refused_requests_off_triton(
    make_key, devtriton, tmp_path, redis_url
):
    _, secret = make_key(max_concurrency=1)
    gateway = start_gateway(tmp_path, {"REDIS_URL": redis_url, "QUOTA_EARLY_START": "false"})
    slow = {"model": CHAT_MODEL, "prompt": "[[delay:100]][[long:50]]"}
    tag = uuid.uuid4().hex[:6]
    store = redis.Redis.from_url(redis_url)
    try:
        with gateway.client(api_key=secret) as client:
            assert (
                client.post("/generate", json={**slow, "prompt": "[[say:hi]]"}).status_code == 200
            )
            with client.stream("POST", "/generate", json={**slow, "stream": True}) as held:
                lines = held.iter_lines()
                next(lines)
                store.execute_command("CLIENT", "PAUSE", 300, "WRITE")
                refused = client.post(
                    "/generate", json=slow, headers={"x-request-id": f"off-{tag}"}
                )
                assert refused.status_code == 429
    finally:
        stop_gateway(gateway)
    time.sleep(0.5)
    assert _events_for(devtriton, f"off-{tag}") == []
