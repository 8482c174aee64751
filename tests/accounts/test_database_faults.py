"""PostgreSQL refused and hung, for real: a TCP proxy in front of it that the test kills
(refused) or stops with SIGSTOP (hung). Never mocks.

- every route answers 503 service_unavailable with retry-after within the configured
  bound (connect + statement timeout), never 500 or a hang, and /health/ready too;
- 60 s of outage under load (c=8) on each quota store, then recovery: one request-log
  row per answered request, tokens charged = usage reported to clients, no lease left.

SQLite has no network to fail: these run on PostgreSQL only.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
import redis
from django.db import connection

from accounts.models import QuotaCounter, QuotaHold, RequestLog
from tests.accounts.conftest import BACKENDS, wait_for_logs
from tests.conftest import CHAT_MODEL, LiveGateway, start_gateway, stop_gateway
from tests.faults import RedisServer, TcpProxy

pytestmark = [
    pytest.mark.committed_db,
    pytest.mark.skipif(
        "not __import__('django.db').db.connection.vendor == 'postgresql'",
        reason="faults are made between the gateway and PostgreSQL",
    ),
]

# The gateway's bound on one database call: DATABASE_CONNECT_TIMEOUT + STATEMENT_TIMEOUT.
TIMEOUTS = {"DATABASE_CONNECT_TIMEOUT": "2", "DATABASE_STATEMENT_TIMEOUT": "2"}
BOUND_S = 4.0
# A request's own time on a loaded 2-core machine, on top of the bound.
MARGIN_S = 2.0


def proxied_env(proxy: TcpProxy) -> dict[str, str]:
    """The gateway's database: the test database, through the proxy."""
    settings = connection.settings_dict
    user = settings.get("USER") or "postgres"
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    return {
        "DATABASE_URL": f"postgres://{user}{password}@127.0.0.1:{proxy.port}/{settings['NAME']}",
        **TIMEOUTS,
        # Keys and models are read again soon after the fault begins.
        "API_KEY_CACHE_SECONDS": "0.2",
        "MODEL_CACHE_SECONDS": "0",
    }


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    settings = connection.settings_dict
    with TcpProxy(settings.get("HOST") or "127.0.0.1", int(settings.get("PORT") or 5432)) as p:
        yield p


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# Every route that reads the database: each authenticates (key lookup) and looks up models.
ROUTES = [
    ("POST", "/v1/chat/completions", {"model": CHAT_MODEL, "messages": user("[[say:hi]]")}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": CHAT_MODEL, "messages": user("[[say:hi]]"), "stream": True},
    ),
    ("POST", "/v1/completions", {"model": CHAT_MODEL, "prompt": "[[say:hi]]"}),
    ("POST", "/generate", {"model": CHAT_MODEL, "prompt": "[[say:hi]]"}),
    ("POST", "/generate", {"model": CHAT_MODEL, "prompt": "[[say:hi]]", "stream": True}),
    ("POST", "/batch_generate", {"model": CHAT_MODEL, "prompts": ["[[say:a]]", "[[say:b]]"]}),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{CHAT_MODEL}", None),
]


def call(client: httpx.Client, method: str, path: str, body, request_id: str) -> httpx.Response:
    return client.request(method, path, json=body, headers={"x-request-id": request_id})


@pytest.mark.parametrize("fault", ["refused", "hung"])
def test_every_route_answers_503_within_the_bound(fault, proxy, make_key, tmp_path):
    key, secret = make_key(max_concurrency=50)  # limited: admissions use the database too
    gateway = start_gateway(tmp_path, proxied_env(proxy), api_key=secret)
    prefix = f"fault-{fault}-{uuid.uuid4().hex[:6]}"
    sent = 0
    try:
        with gateway.client() as client:
            for method, path, body in ROUTES:
                assert call(client, method, path, body, f"{prefix}-{sent}").status_code == 200
                sent += 1
            proxy.kill() if fault == "refused" else proxy.pause()
            time.sleep(0.3)  # past API_KEY_CACHE_SECONDS: the next request reads the key
            for method, path, body in ROUTES:
                started = time.monotonic()
                response = call(client, method, path, body, f"{prefix}-{sent}")
                took = time.monotonic() - started
                sent += 1
                assert response.status_code == 503, (path, response.text, gateway.log_tail())
                assert response.json()["error"]["code"] == "service_unavailable"
                assert response.headers["retry-after"] == "1"
                assert took <= BOUND_S + MARGIN_S, (path, took)
            started = time.monotonic()
            ready = client.get("/health/ready")
            assert time.monotonic() - started <= BOUND_S + MARGIN_S
            assert ready.status_code == 503 and ready.json()["database"] == "unavailable"

            proxy.start() if fault == "refused" else proxy.resume()
            deadline = time.monotonic() + 20
            while client.get("/health/ready").status_code != 200:
                assert time.monotonic() < deadline, gateway.log_tail()
                time.sleep(0.2)
            for method, path, body in ROUTES:
                assert call(client, method, path, body, f"{prefix}-{sent}").status_code == 200
                sent += 1
        # The 503s' rows, kept in the spool through the fault, are written now.
        rows = lambda: RequestLog.objects.filter(request_id__startswith=prefix).count()  # noqa: E731
        api_calls = sum(1 for _, path, _ in ROUTES if not path.startswith("/v1/models"))
        assert wait_for_logs(rows, sent, timeout=20) == sent, gateway.log_tail()
        assert RequestLog.objects.filter(request_id__startswith=prefix, status=503).count() == (
            len(ROUTES)
        )
        assert api_calls  # the table holds generating routes as well as the model list
        assert QuotaHold.objects.filter(subject=f"k{key.pk}").count() == 0
    finally:
        stop_gateway(gateway)


# ---- 60 s of outage under load --------------------------------------------------------------


@dataclass
class Tally:
    """What the load's clients saw."""

    answered: dict[int, int] = field(default_factory=dict)  # status → responses
    tokens: int = 0  # usage reported in 200 responses
    unanswered: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int, tokens: int) -> None:
        with self.lock:
            self.answered[status] = self.answered.get(status, 0) + 1
            self.tokens += tokens

    @property
    def total(self) -> int:
        return sum(self.answered.values())


def _stream_usage(response: httpx.Response) -> int | None:
    usage, done = None, False
    for line in response.iter_lines():
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            chunk = orjson.loads(line[6:])
            usage = chunk.get("usage") or usage
    return usage["total_tokens"] if done and usage else None


def one_request(client: httpx.Client, kind: int, request_id: str) -> tuple[int, int, float]:
    """Send one request of `kind`; (status, tokens reported, retry-after)."""
    headers = {"x-request-id": request_id}
    if kind == 0:
        body = {"model": CHAT_MODEL, "messages": user("[[say:hello there]]"), "max_tokens": 16}
        response = client.post("/v1/chat/completions", json=body, headers=headers)
        tokens = response.json()["usage"]["total_tokens"] if response.status_code == 200 else 0
    elif kind == 1:
        body = {
            "model": CHAT_MODEL,
            "messages": user("[[delay:40]][[say:a stream that lasts]]"),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            tokens = _stream_usage(response) if response.status_code == 200 else 0
            if response.status_code != 200:
                response.read()
        assert tokens is not None, "a stream ended without its usage"
    else:
        body = {"model": CHAT_MODEL, "prompt": "[[say:completion]]", "max_tokens": 12}
        response = client.post("/v1/completions", json=body, headers=headers)
        tokens = response.json()["usage"]["total_tokens"] if response.status_code == 200 else 0
    retry = float(response.headers.get("retry-after", 0)) if response.status_code == 503 else 0
    return response.status_code, tokens, retry


def load(gateway: LiveGateway, prefix: str, stop: threading.Event, tally: Tally) -> None:
    """Eight clients sending until `stop`; like OpenAI's SDK, each waits out retry-after."""

    def client_loop(worker: int) -> None:
        with gateway.client() as client:
            for n in range(1_000_000):
                if stop.is_set():
                    return
                request_id = f"{prefix}-{worker}-{n}"
                try:
                    status, tokens, retry = one_request(client, n % 3, request_id)
                except httpx.HTTPError as exc:
                    tally.unanswered.append(f"{request_id}: {exc!r}")
                    continue
                tally.add(status, tokens)
                if retry:
                    stop.wait(min(retry, 1.0))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client_loop, range(8)))


def charged(key, backend: str, redis_url: str | None) -> tuple[int, int]:
    """(tokens charged to the key's budget, leases left)."""
    if backend == "database":
        usage = QuotaCounter.objects.get(subject=f"k{key.pk}")
        return usage.budget_used, QuotaHold.objects.filter(subject=f"k{key.pk}").count()
    client = redis.Redis.from_url(redis_url)
    try:
        tag = f"gw:{{p{key.project_id}}}:k{key.pk}"
        budget = int(client.get(f"{tag}:budget:total") or 0)
        return budget, client.zcard(f"{tag}:leases") + client.hlen(f"{tag}:held")
    finally:
        client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sixty_seconds_of_outage_under_load(backend, proxy, make_key, tmp_path):
    """30 s hung, then 30 s refused, with eight clients sending throughout."""
    key, secret = make_key(budget_tokens=10**12, budget_period="total", max_concurrency=100)
    prefix = f"outage-{backend}-{uuid.uuid4().hex[:6]}"
    with RedisServer(tmp_path / "redis") as redis_server:
        env = proxied_env(proxy)
        if backend == "redis":
            env["REDIS_URL"] = redis_server.url
        gateway = start_gateway(tmp_path, env, api_key=secret)
        tally, stop = Tally(), threading.Event()
        loader = threading.Thread(target=load, args=(gateway, prefix, stop, tally))
        try:
            loader.start()
            time.sleep(5)
            proxy.pause()
            time.sleep(30)
            proxy.kill()
            time.sleep(30)
            proxy.start()
            time.sleep(10)
            stop.set()
            loader.join(60)
            assert not loader.is_alive()
            rows = RequestLog.objects.filter(request_id__startswith=prefix)
            logged = wait_for_logs(rows.count, tally.total, timeout=60)
            tokens_charged, leases = charged(key, backend, redis_server.url)
            deadline = time.monotonic() + 20
            while (tokens_charged != tally.tokens or leases) and time.monotonic() < deadline:
                time.sleep(0.2)
                tokens_charged, leases = charged(key, backend, redis_server.url)
        finally:
            stop.set()
            stop_gateway(gateway)
    print(f"{backend}: {tally.answered} answered, {tally.tokens} tokens reported")
    assert tally.unanswered == []
    assert tally.answered.get(503, 0) > 0 and tally.answered.get(200, 0) > 0
    assert set(tally.answered) <= {200, 503}, tally.answered
    assert logged == tally.total, gateway.log_tail(100)
    assert rows.filter(status=503).count() == tally.answered[503]
    row_tokens = sum(r.total_tokens for r in rows.filter(status=200))
    assert (tokens_charged, row_tokens) == (tally.tokens, tally.tokens)
    assert leases == 0
