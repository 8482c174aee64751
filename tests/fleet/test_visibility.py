"""What an operator sees of the fleet: the admin's Check Triton, and /metrics."""

from __future__ import annotations

import re
import threading
import uuid

import httpx
import pytest

from tests.api.test_metrics import scrape, value
from tests.fleet.conftest import FLEET_MODEL, chat, wait_until

pytestmark = pytest.mark.committed_db

PASSWORD = "fleet-admin-password"


@pytest.fixture
def admin_session(committed, fleet_gateway) -> httpx.Client:
    """An httpx client logged in to the fleet gateway's admin as a fresh superuser."""
    from django.contrib.auth import get_user_model

    username = f"fleet-admin-{uuid.uuid4().hex[:6]}"
    get_user_model().objects.create_superuser(username, f"{username}@example.com", PASSWORD)
    client = httpx.Client(base_url=fleet_gateway.url, timeout=30, follow_redirects=True)
    login = client.get("/admin/login/")
    response = client.post(
        "/admin/login/?next=/admin/",
        data={"username": username, "password": PASSWORD, "next": "/admin/", **_csrf(login.text)},
        headers={"referer": fleet_gateway.url + "/admin/login/"},
    )
    assert "/admin/login/" not in str(response.url), response.text[:500]
    try:
        yield client
    finally:
        client.close()


def _csrf(page: str) -> dict[str, str]:
    return {
        "csrfmiddlewaretoken": re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
    }


def _check_triton(client: httpx.Client, gateway, config) -> list[str]:
    """Run the admin action on `config`; the messages it shows."""
    changelist = client.get("/admin/llmgateway/modelconfig/")
    response = client.post(
        "/admin/llmgateway/modelconfig/",
        data={"action": "check_triton", "_selected_action": [config.pk], **_csrf(changelist.text)},
        headers={"referer": gateway.url + "/admin/llmgateway/modelconfig/"},
    )
    assert response.status_code == 200
    messages = re.findall(r"<li class=\"(?:success|info|warning|error)\">(.*?)</li>", response.text)
    return [re.sub(r"\s+", " ", m) for m in messages]


class Streams:
    """`count` slow streams held open (each ~3 s) while the test looks."""

    def __init__(self, gateway, count: int) -> None:
        self.started = threading.Barrier(count + 1)
        self.threads = [threading.Thread(target=self._one, args=(gateway,)) for _ in range(count)]

    def _one(self, gateway) -> None:
        with (
            gateway.client() as client,
            client.stream(
                "POST", "/v1/chat/completions", json=chat("[[long:30]][[delay:100]]", stream=True)
            ) as response,
        ):
            lines = response.iter_lines()
            next(lines)
            self.started.wait(10)
            for _ in lines:
                pass

    def __enter__(self) -> Streams:
        for thread in self.threads:
            thread.start()
        self.started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        for thread in self.threads:
            thread.join(30)


def test_check_triton_lists_every_endpoint(
    fleet_restored, fleet_gateway, fleet_config, admin_session
):
    fleet = fleet_restored
    dead = fleet.kill(1)
    with Streams(fleet_gateway, 2):
        messages = _check_triton(admin_session, fleet_gateway, fleet_config)
    # (The admin capitalises each message's first letter.)
    assert messages[0].lower().startswith(f"{FLEET_MODEL}: ready, decoupled (streams)")
    lines = {
        server.grpc_url: [m for m in messages if f" endpoint {server.grpc_url}: " in m]
        for server in fleet.servers
    }
    assert all(len(found) == 1 for found in lines.values()), messages  # every endpoint, once
    lines = {address: found[0] for address, found in lines.items()}
    down = lines[dead.grpc_url]
    assert ": down; 0 in flight; last probe " in down
    error = re.search(r"; last error: (.*) \(([\d.]+) s ago\)$", down)
    assert error and float(error[2]) < 30  # from this outage (earlier tests had theirs)
    assert "connect" in error[1].lower() or "unavailable" in error[1].lower()
    live = [lines[s.grpc_url] for s in fleet.servers if s is not dead]
    assert all(": up; " in line and "; last probe " in line for line in live)
    in_flight = [int(re.search(r"; (\d+) in flight;", line)[1]) for line in live]
    assert sum(in_flight) == 2  # the two streams, on the two Tritons that are up
    # The admin's own pages never wait for Triton.
    assert admin_session.get("/admin/llmgateway/modelconfig/").status_code == 200


def test_metrics_show_each_endpoint(fleet, fleet_gateway):
    url = fleet_gateway.url
    with Streams(fleet_gateway, 3):
        during = scrape(url)
    after = wait_until(
        lambda: (
            (s := scrape(url))
            and sum(v for (n, _), v in s.items() if n == "llmgateway_triton_endpoint_in_flight")
            == 0
            and s
        ),
        timeout=10,
        what="streams settled",
    )
    labels = {s.grpc_url for s in fleet.servers}
    in_flight = {
        dict(key)["endpoint"]: v
        for (name, key), v in during.items()
        if name == "llmgateway_triton_endpoint_in_flight"
    }
    assert set(in_flight) >= labels  # one series per endpoint, named by its address
    assert sum(in_flight[label] for label in labels) == 3
    for label in labels:
        assert value(after, "llmgateway_triton_endpoint_up", endpoint=label) == 1
        assert value(after, "llmgateway_triton_endpoint_in_flight", endpoint=label) == 0


def test_endpoint_labels_are_bounded(monkeypatch):
    """Pods of a headless Service come and go with new addresses: a process names at most
    MAX_ENDPOINT_LABELS of them, the rest share one label."""
    from llmgateway.triton import metrics

    monkeypatch.setattr(metrics, "_labels", set())
    labels = [metrics.endpoint_label(f"10.9.{i // 250}.{i % 250}:8001") for i in range(100)]
    assert len(set(labels)) == metrics.MAX_ENDPOINT_LABELS + 1
    assert labels[metrics.MAX_ENDPOINT_LABELS :] == [metrics.OTHER] * (
        100 - metrics.MAX_ENDPOINT_LABELS
    )
    assert metrics.endpoint_label("10.9.0.0:8001") == "10.9.0.0:8001"  # known ones keep theirs
