"""Redis out under load, for real: a redis-server of the test's own, killed and restarted.

Every answered request keeps its row (written to the database directly while Redis is
out), readiness goes 503 and back, keys with limits fail closed (503), and what a
request in flight when Redis died settled is charged once Redis is back.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from accounts.models import RequestLog
from tests.accounts.conftest import wait_for_logs
from tests.accounts.test_database_faults import Tally, charged, one_request
from tests.api.test_metrics import scrape, value
from tests.conftest import start_gateway, stop_gateway
from tests.faults import RedisServer

pytestmark = [
    pytest.mark.committed_db,
    pytest.mark.skipif(not RedisServer.available(), reason="needs the redis-server binary"),
]


def test_redis_outage_under_load(make_key, tmp_path):
    limited, limited_secret = make_key(budget_tokens=10**12, budget_period="total")
    _, open_secret = make_key()
    prefix = f"redis-out-{uuid.uuid4().hex[:6]}"
    tallies = {"limited": Tally(), "open": Tally()}
    readiness: list[tuple[str, int]] = []
    store_up: list[float] = []
    stop = threading.Event()
    with RedisServer(tmp_path / "redis") as redis_server:
        gateway = start_gateway(tmp_path, {"REDIS_URL": redis_server.url})

        def client_loop(worker: int) -> None:
            name = "limited" if worker % 2 else "open"
            secret = limited_secret if name == "limited" else open_secret
            with gateway.client(api_key=secret) as client:
                for n in range(1_000_000):
                    if stop.is_set():
                        return
                    request_id = f"{prefix}-{worker}-{n}"
                    try:
                        status, tokens, retry = one_request(client, n % 3, request_id)
                    except httpx.HTTPError as exc:
                        tallies[name].unanswered.append(f"{request_id}: {exc!r}")
                        continue
                    tallies[name].add(status, tokens)
                    if retry:
                        stop.wait(min(retry, 1.0))

        def phase(label: str, seconds: float) -> None:
            time.sleep(seconds)
            readiness.append(
                (label, httpx.get(gateway.url + "/health/ready", timeout=10).status_code)
            )
            # The readiness check just run set the store's gauge (the alert rules' input).
            store_up.append(value(scrape(gateway.url), "llmgateway_store_up", store="redis"))

        try:
            with ThreadPoolExecutor(8) as pool:
                workers = [pool.submit(client_loop, w) for w in range(8)]
                phase("before", 5)
                redis_server.kill()
                phase("out", 15)
                redis_server.start()
                phase("back", 10)
                stop.set()
                for worker in workers:
                    worker.result(60)
            answered = sum(t.total for t in tallies.values())
            rows = RequestLog.objects.filter(request_id__startswith=prefix)
            logged = wait_for_logs(rows.count, answered, timeout=30)
            deadline = time.monotonic() + 20
            while charged(limited, "redis", redis_server.url) != (tallies["limited"].tokens, 0):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            tokens_charged, leases = charged(limited, "redis", redis_server.url)
            store_errors = value(
                scrape(gateway.url), "llmgateway_quota_store_errors_total", store="redis"
            )
        finally:
            stop.set()
            stop_gateway(gateway)
    print({name: (t.answered, t.tokens) for name, t in tallies.items()}, readiness)
    assert [t.unanswered for t in tallies.values()] == [[], []]
    assert readiness == [("before", 200), ("out", 503), ("back", 200)]
    assert store_up == [1, 0, 1]
    assert logged == answered, gateway.log_tail(100)
    # Keys without limits are served throughout; limited keys fail closed while it is out.
    assert set(tallies["open"].answered) == {200}
    assert tallies["limited"].answered.get(503, 0) > 0
    refused = rows.filter(status=503)
    assert refused.count() == tallies["limited"].answered[503]
    assert set(refused.values_list("error_type", flat=True)) == {"service_unavailable"}
    assert store_errors == tallies["limited"].answered[503]
    assert (tokens_charged, leases) == (tallies["limited"].tokens, 0)
