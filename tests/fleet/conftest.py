"""A fleet of dev Tritons on 127.0.0.1, 127.0.0.2 and 127.0.0.3, all on the same ports (as
the pods behind one Service), a model config pointing at all of them, and a gateway.

Tests that kill a Triton restart it before they end (`fleet_restored`), so every test
starts with the whole fleet up.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from llmgateway.devtriton.server import DevTriton, free_port
from tests.conftest import (
    TOKENIZER,
    LiveGateway,
    model_upsert_committed,
    start_gateway,
    stop_gateway,
)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
FLEET_MODEL = "fleet-chat"
LIMITS = {"context_length": 4096, "max_output_tokens": 1000, "default_max_tokens": 64}
# The gateway under test re-resolves names quickly, so the resolution tests stay short.
GATEWAY_ENV = {"TRITON_RESOLVE_SECONDS": "0.5"}
REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/13")


class Fleet:
    """Dev Tritons sharing their ports, one per loopback address."""

    def __init__(self, servers: list[DevTriton]) -> None:
        self.servers = servers

    @property
    def port(self) -> int:
        return self.servers[0].grpc_port

    def addresses(self, count: int | None = None) -> str:
        """The model config's triton_url for the first `count` servers (all by default)."""
        return ",".join(s.grpc_url for s in self.servers[:count])

    def counts(self, model: str = "tensorrt_llm") -> list[int]:
        """Each server's nv_inference_request_success (Triton's own metrics); a server
        that is down counts as 0."""
        return [s.inference_count(model) if s.is_running() else 0 for s in self.servers]

    def kill(self, index: int) -> DevTriton:
        server = self.servers[index]
        server.process.send_signal(signal.SIGKILL)  # as a crash, or a node going away, would
        server.process.wait()
        return server

    def restore(self) -> None:
        for server in self.servers:
            if not server.is_running():
                server.restart()


@pytest.fixture(scope="package")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    grpc, http, metrics = (free_port(HOSTS) for _ in range(3))
    servers = []
    try:
        for host in HOSTS:
            server = DevTriton(
                host=host,
                grpc_port=grpc,
                http_port=http,
                metrics_port=metrics,
                state_dir=tmp_path_factory.mktemp(f"triton-{host}"),
            )
            servers.append(server.start())
        yield Fleet(servers)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def committed(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Database access with autocommit, as the gateway subprocesses see it."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def fleet_restored(fleet) -> Iterator[Fleet]:
    """The fleet, every server running again when the test ends."""
    try:
        yield fleet
    finally:
        fleet.restore()


def fleet_model_upsert(name: str, addresses: str, **fields):
    return model_upsert_committed(
        name=name,
        triton_url=addresses,
        triton_model="tensorrt_llm",
        tokenizer_path=TOKENIZER,
        **{**LIMITS, **fields},
    )


@pytest.fixture(scope="package")
def fleet_config(fleet, django_db_setup, django_db_blocker):
    """The model config FLEET_MODEL, served by all three Tritons."""
    with django_db_blocker.unblock():
        return fleet_model_upsert(FLEET_MODEL, fleet.addresses())


@pytest.fixture(scope="package")
def fleet_gateway(fleet_config, owner_key, tmp_path_factory) -> Iterator[LiveGateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("fleet-gateway"),
        {**GATEWAY_ENV, "REDIS_URL": REDIS_TEST_URL},
        api_key=owner_key,
    )
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


def chat(content: str, *, stream: bool = False, max_tokens: int = 64, model: str = FLEET_MODEL):
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def wait_until(condition, *, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `condition()` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def serves(gateway: LiveGateway, model: str = FLEET_MODEL) -> bool:
    try:
        with gateway.client() as client:
            return (
                client.post(
                    "/v1/chat/completions", json=chat("[[say:ok]]", model=model)
                ).status_code
                == 200
            )
    except httpx.HTTPError:
        return False
