"""A host name with several addresses is several endpoints, re-resolved as they change.

The name is resolved the way the gateway resolves any name (getaddrinfo, which reads
/etc/hosts here, as it reads a headless Service's DNS records in a cluster). The tests
write their own lines into /etc/hosts (they run as root) and remove them afterwards,
whether they pass or not.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmgateway.triton.errors import TritonUnavailable
from llmgateway.triton.pool import EndpointPool
from tests.fleet.conftest import chat, fleet_model_upsert, wait_until

pytestmark = pytest.mark.committed_db

HOSTS_FILE = Path("/etc/hosts")
MARK = "# llmgateway tests/fleet"


class HostsFile:
    """This test's lines in /etc/hosts, each tagged with MARK; everything else untouched
    (the file is rewritten in place: it may be a bind mount)."""

    def set(self, name: str, addresses: list[str]) -> None:
        lines = [line for line in self._lines() if not self._ours(line, name)]
        lines += [f"{address} {name} {MARK}" for address in addresses]
        self._write(lines)

    def clear(self) -> None:
        self._write([line for line in self._lines() if MARK not in line])

    @staticmethod
    def _ours(line: str, name: str) -> bool:
        return MARK in line and f" {name} " in line

    def _lines(self) -> list[str]:
        return HOSTS_FILE.read_text().splitlines()

    def _write(self, lines: list[str]) -> None:
        with HOSTS_FILE.open("r+") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.truncate()


@pytest.fixture
def hosts() -> Iterator[HostsFile]:
    if os.geteuid() != 0 or not os.access(HOSTS_FILE, os.W_OK):
        pytest.skip("needs to write /etc/hosts (the tests run as root in CI)")
    hosts = HostsFile()
    try:
        yield hosts
    finally:
        hosts.clear()


def _name() -> str:
    return f"triton-{uuid.uuid4().hex[:8]}.fleet.test"


async def test_a_name_is_one_endpoint_per_address_and_follows_its_changes(hosts, fleet):
    name = _name()
    hosts.set(name, ["127.0.0.2", "127.0.0.3"])
    pool = EndpointPool(f"{name}:{fleet.port}")  # not started: the test drives it
    await pool.probe_now()
    assert sorted(e.address for e in pool.endpoints) == [
        f"127.0.0.2:{fleet.port}",
        f"127.0.0.3:{fleet.port}",
    ]
    assert {e.target for e in pool.endpoints} == {f"{name}:{fleet.port}"}
    assert all(e.up for e in pool.endpoints)  # both answered their probes
    kept = pool.endpoints[0]

    hosts.set(name, ["127.0.0.2"])
    await pool.probe_now()
    assert [e.address for e in pool.endpoints] == [f"127.0.0.2:{fleet.port}"]
    assert pool.endpoints[0] is kept  # what was known of it stays

    hosts.set(name, ["127.0.0.1", "127.0.0.2"])
    await pool.probe_now()
    assert sorted(e.address for e in pool.endpoints) == [
        f"127.0.0.1:{fleet.port}",
        f"127.0.0.2:{fleet.port}",
    ]

    hosts.set(name, [])  # the name is gone: no endpoint, and a request is refused at once
    await pool.probe_now()
    assert pool.endpoints == []
    with pytest.raises(TritonUnavailable):
        pool.acquire("tensorrt_llm")


def _served(fleet, gateway, model: str, requests: int = 12) -> list[int]:
    before = fleet.counts()
    with gateway.client() as client:
        for _ in range(requests):
            response = client.post("/v1/chat/completions", json=chat("[[say:x]]", model=model))
            assert response.status_code == 200, response.text
    return [after - earlier for after, earlier in zip(fleet.counts(), before, strict=True)]


@pytest.mark.usefixtures("committed")
def test_the_gateway_sends_traffic_where_the_name_points(hosts, fleet, fleet_gateway):
    """TRITON_RESOLVE_SECONDS is 0.5 in this gateway (the default is 10)."""
    name = _name()
    model = f"fleet-named-{name[7:15]}"
    hosts.set(name, ["127.0.0.2", "127.0.0.3"])
    fleet_model_upsert(model, f"{name}:{fleet.port}")
    assert _served(fleet, fleet_gateway, model) == [0, 6, 6]

    hosts.set(name, ["127.0.0.2"])
    wait_until(lambda: _served(fleet, fleet_gateway, model, 4) == [0, 4, 0], timeout=5)

    hosts.set(name, ["127.0.0.1", "127.0.0.2"])
    wait_until(lambda: _served(fleet, fleet_gateway, model, 4) == [2, 2, 0], timeout=5)


def test_hosts_file_lines_are_removed_even_when_a_test_fails(hosts):
    name = _name()
    hosts.set(name, ["127.0.0.9"])
    assert f"127.0.0.9 {name} {MARK}" in HOSTS_FILE.read_text()
    hosts.clear()
    assert MARK not in HOSTS_FILE.read_text()
    assert asyncio.run(_resolves(name)) is False


async def _resolves(name: str) -> bool:
    try:
        await asyncio.get_running_loop().getaddrinfo(name, 1)
    except OSError:
        return False
    return True
