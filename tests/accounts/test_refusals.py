"""Requests without a valid key: counted per minute and client address, never a row each.

Each test sends from its own loopback address (127.0.0.0/8 is all this machine's), so
the counts it reads are its own whatever other tests did in the same minute.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db.models import Sum

from accounts.models import RefusedRequests, RequestLog
from tests.accounts.conftest import wait_for_logs
from tests.conftest import CHAT_MODEL, start_gateway, stop_gateway

pytestmark = pytest.mark.committed_db

_addresses = itertools.count(10)


def client_from(gateway, address: str, **kwargs) -> httpx.Client:
    """A client whose connections come from `address` (what the gateway counts by)."""
    return gateway.client(transport=httpx.HTTPTransport(local_address=address), **kwargs)


def new_address() -> str:
    return f"127.0.{next(_addresses)}.{int(time.time()) % 200 + 2}"


def counted(address: str) -> tuple[int, int, int]:
    """(rows, requests, of which 401) counted for `address`."""
    rows = RefusedRequests.objects.filter(client_ip=address)
    totals = rows.aggregate(requests=Sum("requests"), unauthorized=Sum("unauthorized"))
    return rows.count(), totals["requests"] or 0, totals["unauthorized"] or 0


def wait_counted(address: str, requests: int, timeout: float = 20.0) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    while (seen := counted(address))[1] < requests and time.monotonic() < deadline:
        time.sleep(0.2)
    return seen


def test_a_thousand_keyless_requests_are_one_row_per_minute(committed, model_configs, tmp_path):
    # Content logging on: were a row written, the prompt would be in it.
    gateway = start_gateway(tmp_path, {"REQUEST_LOG_CONTENT": "true"})
    address = new_address()
    secret = "SECRET-PROMPT-" + address
    started = time.time()
    try:

        def send(worker: int) -> list[int]:
            statuses = []
            with client_from(gateway, address, api_key=None) as client:
                for i in range(worker, 1000, 8):
                    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": secret}]}
                    headers = {"x-request-id": f"keyless-{address}-{i}"}
                    if i % 2:
                        headers["authorization"] = "Bearer sk-gw-not-a-key"
                    response = client.post("/v1/chat/completions", json=body, headers=headers)
                    statuses.append(response.status_code)
            return statuses

        with ThreadPoolExecutor(8) as pool:
            statuses = [status for part in pool.map(send, range(8)) for status in part]
        assert len(statuses) == 1000
        minutes = int(time.time()) // 60 - int(started) // 60 + 1
        assert set(statuses) == {401}
        rows, requests, unauthorized = wait_counted(address, 1000)
        assert (requests, unauthorized) == (1000, 1000), gateway.log_tail()
        assert 1 <= rows <= minutes
    finally:
        stop_gateway(gateway)
    assert counted(address)[1] == 1000  # nothing counted twice at shutdown
    assert not RequestLog.objects.filter(request_id__startswith=f"keyless-{address}-").exists()
    assert not RequestLog.objects.filter(prompt_text__contains=secret).exists()
    assert not RequestLog.objects.filter(client_ip=address).exists()


def test_keyless_requests_are_counted_whatever_their_answer(committed, live_gateway):
    address = new_address()
    with client_from(live_gateway, address, api_key=None) as client:
        assert client.post("/generate", json={"prompt": "x"}).status_code == 401
        assert client.get("/v1/unknown").status_code == 404
        assert client.post("/v1/models").status_code == 405
    assert wait_counted(address, 3) == (1, 3, 1)
    assert not RequestLog.objects.filter(client_ip=address).exists()


def test_a_valid_key_refused_before_its_check_keeps_its_row(committed, live_gateway, make_key):
    """413 and unknown paths are answered before the key is checked: it is checked after."""
    key, secret = make_key()
    address = new_address()
    headers = {"authorization": f"Bearer {secret}", "x-request-id": f"unknown-{address}"}
    with client_from(live_gateway, address, api_key=None, headers=headers) as client:
        assert client.get("/v1/unknown").status_code == 404
    assert wait_for_logs(lambda: RequestLog.objects.filter(client_ip=address).count(), 1) == 1
    row = RequestLog.objects.get(client_ip=address)
    assert (row.status, row.api_key_id, row.request_id) == (404, key.pk, f"unknown-{address}")
    assert counted(address) == (0, 0, 0)


def test_health_and_metrics_write_no_rows(committed, live_gateway):
    address = new_address()
    with client_from(live_gateway, address, api_key=None) as client:
        for path in ("/health", "/health/ready", "/metrics", "/health", "/metrics"):
            assert client.get(path).status_code in (200, 503)
    time.sleep(1.5)  # rows would be written in the background by now
    assert not RequestLog.objects.filter(client_ip=address).exists()
    assert counted(address) == (0, 0, 0)


def test_health_and_metrics_with_a_key_write_no_rows(committed, live_gateway, make_key):
    """A scraper or a probe sending a valid key writes no row either; the request after
    them, to /v1/models, writes its one (so rows are being written for that address)."""
    _, secret = make_key()
    address = new_address()
    headers = {"authorization": f"Bearer {secret}"}
    with client_from(live_gateway, address, api_key=None, headers=headers) as client:
        for path in ("/health", "/health/ready", "/metrics", "/metrics?x=1"):
            assert client.get(path).status_code in (200, 503)
            assert client.head(path).status_code in (200, 503)
        assert client.get("/v1/models", headers={"x-request-id": f"control-{address}"}).is_success
    assert wait_for_logs(lambda: RequestLog.objects.filter(client_ip=address).count(), 1) == 1
    time.sleep(1.0)  # a row for the probes would have been written with the control's
    rows = list(RequestLog.objects.filter(client_ip=address).values_list("request_id", "endpoint"))
    assert rows == [(f"control-{address}", "/v1/models")]


@pytest.mark.parametrize(
    "path", ["/v1/models%00", "/v1/chat/completions%00x", "/generate%00", "/v1/%ED%A0%80"]
)
def test_a_path_with_nul_keeps_its_row(committed, live_gateway, make_key, path):
    key, secret = make_key()
    address = new_address()
    headers = {"authorization": f"Bearer {secret}"}
    with client_from(live_gateway, address, api_key=None, headers=headers) as client:
        response = client.post(path, json={"model": CHAT_MODEL, "prompt": "x"})
    assert response.status_code in (404, 405)
    assert response.json()["error"]["code"] in ("unknown_url", "method_not_allowed")
    logged = wait_for_logs(lambda: RequestLog.objects.filter(client_ip=address).count(), 1)
    assert logged == 1, live_gateway.log_tail()
    row = RequestLog.objects.get(client_ip=address)
    assert row.api_key_id == key.pk
    assert "\x00" not in row.endpoint and "\ufffd" in row.endpoint
