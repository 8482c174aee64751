"""Fixtures for the platform tests: keys with limits, both quota stores, gateway pairs.

Keys are committed (not inside a test transaction) so gateway subprocesses see
them. Redis tests use database REDIS_TEST_DB (default 13) and flush it first.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import ISSUED_SECRETS, LiveGateway, start_gateway, stop_gateway

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/13")
BACKENDS = ["database", "redis"]


def redis_env(backend: str) -> dict[str, str]:
    return {"REDIS_URL": REDIS_TEST_URL if backend == "redis" else ""}


@pytest.fixture(scope="session", autouse=True)
def _close_worker_connections(django_db_setup) -> Iterator[None]:
    """Close the connection of sync_to_async's worker thread, so the test database can
    be dropped at the end of the session."""
    yield
    from asgiref.sync import sync_to_async
    from django.db import connections

    asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.flushdb()
    except redis.ConnectionError:
        # CI must prove the Redis store; a laptop without Redis may skip it.
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at {REDIS_TEST_URL}")
        pytest.skip(f"Redis is not reachable at {REDIS_TEST_URL}")
    finally:
        client.close()
    return REDIS_TEST_URL


@pytest.fixture
def committed(django_db_blocker) -> Iterator[None]:
    """Database access with autocommit, as the gateway subprocesses see it."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def make_key(committed, model_configs):
    """make_key(**limits) -> (ApiKey, secret), committed; `models=[...]` limits models."""
    from accounts.services import key_create, owner_get_or_create

    def make(models: list[str] | None = None, **limits):
        owner = owner_get_or_create(username="quota-tests")
        key, secret = key_create(
            owner=owner, name=f"test {uuid.uuid4().hex[:6]}", models=models, **limits
        )
        ISSUED_SECRETS.append(secret)  # checked against every gateway log at the end
        return key, secret

    return make


def record(key):
    from accounts.services import KeyRecord

    key.refresh_from_db()
    return KeyRecord.from_row(key)


@pytest.fixture(params=BACKENDS)
def store(request, settings, committed):
    """Each quota store, selected the way the gateway selects it (REDIS_URL)."""
    from accounts.quota import _store_for

    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")
    else:
        settings.REDIS_URL = ""
    return _store_for(settings.REDIS_URL)


@pytest.fixture(scope="session")
def gateway_pairs(model_configs, owner_key, tmp_path_factory) -> Iterator[dict]:
    """Two gateway processes per quota store, started on first use."""
    started: dict[str, tuple[LiveGateway, LiveGateway]] = {}

    def get(backend: str) -> tuple[LiveGateway, LiveGateway]:
        if backend not in started:
            if backend == "redis":
                redis.Redis.from_url(REDIS_TEST_URL).flushdb()
            tmp = tmp_path_factory.mktemp(f"pair-{backend}")
            started[backend] = tuple(
                start_gateway(tmp, redis_env(backend), api_key=owner_key) for _ in range(2)
            )
        return started[backend]

    try:
        yield get
    finally:
        for pair in started.values():
            for gateway in pair:
                stop_gateway(gateway)


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def wait_for_logs(count_query, expected: int, timeout: float = 15.0) -> int:
    """Poll until count_query() reaches expected (the Redis outbox drains asynchronously)."""
    deadline = time.monotonic() + timeout
    count = count_query()
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        count = count_query()
    return count


def post(client: httpx.Client, path: str, body: dict, **kwargs) -> httpx.Response:
    return client.post(path, json=body, **kwargs)
