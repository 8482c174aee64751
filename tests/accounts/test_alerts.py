"""Budget alert webhooks against a loopback receiver: once per threshold, retried after
the receiver fails, and the image-fetch SSRF rules apply."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from accounts.models import BudgetAlert, Project
from tests.accounts.conftest import bearer
from tests.conftest import CHAT_MODEL, start_gateway, stop_gateway

pytestmark = pytest.mark.committed_db


class Receiver:
    """A loopback HTTP server that records POSTs and fails the first `fail` of them."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.posts: list[tuple[int, dict, dict]] = []  # (status answered, body, headers)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status = 500 if len(receiver.posts) < receiver.fail else 200
                receiver.posts.append((status, body, dict(self.headers)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver(fail=1)
    yield server
    server.close()


@pytest.fixture
def alerting_gateway(model_configs, owner_key, tmp_path):
    """A gateway whose SSRF rules let the loopback receiver in, as an operator would list
    an internal receiver (VISION_ALLOWED_NETWORKS), with quick retries."""
    env = {"VISION_ALLOWED_NETWORKS": "127.0.0.0/8", "BUDGET_ALERT_RETRY_SECONDS": "0.2"}
    gateway = start_gateway(tmp_path, env, api_key=owner_key)
    yield gateway
    stop_gateway(gateway)


def spend(gateway, secret: str, until_refused: int = 40) -> list[int]:
    body = {"model": CHAT_MODEL, "prompt": "[[long:10]]", "max_tokens": 10}
    statuses = []
    with httpx.Client(base_url=gateway.url, headers=bearer(secret), timeout=60) as client:
        for _ in range(until_refused):
            statuses.append(client.post("/v1/completions", json=body).status_code)
            if statuses[-1] == 429:
                break
    return statuses


def test_each_threshold_fires_once_and_a_failed_delivery_is_retried(
    alerting_gateway, receiver, make_key
):
    project = Project.objects.create(
        name=f"alerts {uuid.uuid4().hex[:6]}", budget_tokens=300, budget_period="day",
        alert_webhook_url=receiver.url,
    )  # fmt: skip
    keys = [make_key(project=project)[1] for _ in range(2)]
    statuses = spend(alerting_gateway, keys[0]) + spend(alerting_gateway, keys[1], 3)
    assert statuses.count(429) == 2 and 200 in statuses
    deadline = time.monotonic() + 15
    while len([p for p in receiver.posts if p[0] == 200]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # any duplicate would have arrived by now
    delivered = [body for status, body, _ in receiver.posts if status == 200]
    assert sorted(b["threshold"] for b in delivered) == [80, 100]
    assert {b["project_id"] for b in delivered} == {project.public_id}
    assert {(b["budget"], b["limit"]) for b in delivered} == {("tokens", 300)}
    # 80%: the counter reached 240; 100%: the budget refused a request (never overshot).
    assert all(240 <= b["used"] <= 300 for b in delivered)
    # The first POST failed (500) and was retried with the same id; three POSTs in all.
    assert len(receiver.posts) == 3 and receiver.posts[0][0] == 500
    first = receiver.posts[0][1]["id"]
    assert [p[1]["id"] for p in receiver.posts].count(first) == 2
    assert all(headers["Idempotency-Key"] == body["id"] for _, body, headers in receiver.posts)
    alerts = BudgetAlert.objects.filter(project=project)
    assert alerts.count() == 2 and all(a.delivered_at is not None for a in alerts)
    assert sorted(a.attempts for a in alerts) == [1, 2]


def test_the_ssrf_rules_refuse_a_loopback_receiver_by_default(live_gateway, receiver, make_key):
    project = Project.objects.create(
        name=f"alerts {uuid.uuid4().hex[:6]}", budget_tokens=100, budget_period="day",
        alert_webhook_url=receiver.url,
    )  # fmt: skip
    _, secret = make_key(project=project)
    spend(live_gateway, secret)
    deadline = time.monotonic() + 10
    alerts = BudgetAlert.objects.filter(project=project)
    while not alerts.filter(last_error__contains="non-public").exists():
        assert time.monotonic() < deadline, list(alerts.values())
        time.sleep(0.2)
    assert receiver.posts == []
    assert not alerts.filter(delivered_at__isnull=False).exists()
