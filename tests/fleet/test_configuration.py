"""Configuring several Tritons: the address list, the model field and its migration,
`serve --server-url`, the image's TRITON_SERVER_URLS, and the dev Triton's --host."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from llmgateway.addresses import Target, targets_parse
from llmgateway.devtriton.management.commands.devtriton import Command as DevTritonCommand
from llmgateway.devtriton.server import DevTriton, free_port
from llmgateway.management.commands.serve import Command as ServeCommand
from llmgateway.models import ModelConfig
from tests.conftest import ROOT, TOKENIZER, LiveGateway, _database_env, gateway_wait
from tests.fleet.conftest import chat

pytestmark = pytest.mark.committed_db


@pytest.mark.parametrize(
    ("text", "targets"),
    [
        ("10.0.0.5:8001", [Target("10.0.0.5", 8001)]),
        (" triton:8001 ,10.0.0.6:8001,", [Target("triton", 8001), Target("10.0.0.6", 8001)]),
        ("a:1\nb:2 a:1", [Target("a", 1), Target("b", 2)]),  # any separator; no repeats
        ("[::1]:8001", [Target("::1", 8001)]),
        ("triton.llm.svc.cluster.local:8001", [Target("triton.llm.svc.cluster.local", 8001)]),
    ],
)
def test_addresses_parse(text, targets):
    assert list(targets_parse(text)) == targets


@pytest.mark.parametrize(
    "text", ["", " , ", "triton", "triton:0", "triton:70000", "[zz]:1", "a:1,b"]
)
def test_malformed_addresses_are_refused(text):
    with pytest.raises(ValueError):
        targets_parse(text)


def test_the_model_field_takes_a_list_and_refuses_malformed_ones():
    config = ModelConfig(
        name="x", tokenizer_path=TOKENIZER, triton_url="10.0.0.5:8001,10.0.0.6:8001"
    )
    config.clean_fields()
    config.triton_url = "10.0.0.5:8001,nonsense"
    with pytest.raises(ValidationError) as caught:
        config.clean_fields()
    assert "'nonsense' is not host:port" in str(caught.value.message_dict["triton_url"])


@pytest.mark.usefixtures("committed")
def test_the_migration_keeps_a_single_address():
    """0005 widens triton_url to hold a list; an address stored before it is one endpoint."""
    executor = MigrationExecutor(connection)
    before = executor.loader.project_state(("llmgateway", "0003_modelconfig_trust_remote_code"))
    after = executor.loader.project_state(("llmgateway", "0005_modelconfig_triton_addresses"))
    old = before.apps.get_model("llmgateway", "ModelConfig")._meta.get_field("triton_url")
    new = after.apps.get_model("llmgateway", "ModelConfig")._meta.get_field("triton_url")
    assert (old.name, old.default) == (new.name, new.default)  # same column, kept as it is
    assert new.max_length >= 4 * old.max_length
    migration = executor.loader.get_migration("llmgateway", "0005_modelconfig_triton_addresses")
    assert [type(op).__name__ for op in migration.operations] == ["AlterField"]
    # Whatever the old field held (host:port, up to its length) is valid in the new one.
    single = "triton-" + "x" * (old.max_length - 13) + ":8001"
    assert len(single) <= old.max_length and targets_parse(single) == (Target(single[:-5], 8001),)


def _serve_options(*args: str) -> dict:
    parser = ServeCommand().create_parser("manage.py", "serve")
    return vars(parser.parse_args(list(args)))


def test_serve_takes_a_comma_separated_server_url():
    options = _serve_options("--server-url", "10.0.0.5:8001, triton:8001")
    assert options["server_url"] == "10.0.0.5:8001,triton:8001"
    assert _serve_options()["server_url"] == "127.0.0.1:8001"
    with pytest.raises(CommandError, match="'triton' is not host:port"):
        _serve_options("--server-url", "10.0.0.5:8001,triton")


def _entrypoint(tmp_path, env: dict[str, str]) -> LiveGateway:
    """docker/entrypoint.sh, as the image runs it, with the test database."""
    port = free_port()
    log_path = tmp_path / f"entrypoint-{port}.log"
    full_env = {
        **os.environ,
        **_database_env(),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        # The test process's, so keys it made hash the same there.
        "SECRET_KEY": settings.SECRET_KEY,
        "API_KEY_PEPPER": settings.API_KEY_PEPPER,
        "PORT": str(port),
        "WORKERS": "1",
        "GATEWAY_MIGRATE": "false",
        "TOKENIZER_PATH": TOKENIZER,
        "MODEL_NAME": "tensorrt_llm",
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["sh", str(ROOT / "docker" / "entrypoint.sh")],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gateway = LiveGateway(f"http://127.0.0.1:{port}", process, log_path)
    try:
        return gateway_wait(gateway, 60, "the entry point")
    except RuntimeError:
        process.kill()
        raise


@pytest.mark.usefixtures("committed")
@pytest.mark.parametrize("variables", ["urls", "host and port"])
def test_the_image_entry_point_registers_the_tritons(variables, fleet, tmp_path, owner_key):
    name = f"fleet-image-{uuid.uuid4().hex[:6]}"
    first, second = fleet.servers[1], fleet.servers[2]
    if variables == "urls":
        env = {"TRITON_SERVER_URLS": f"{first.grpc_url}, {second.grpc_url}"}
        expected = f"{first.grpc_url},{second.grpc_url}"
    else:
        env = {"TRITON_SERVER_HOST": first.host, "TRITON_SERVER_PORT": str(first.grpc_port)}
        expected = first.grpc_url
    gateway = _entrypoint(tmp_path, {**env, "SERVED_MODEL_NAME": name})
    try:
        assert ModelConfig.objects.get(name=name).triton_url == expected
        before = fleet.counts()
        with gateway.client(api_key=owner_key) as client:
            for _ in range(4):
                response = client.post("/v1/chat/completions", json=chat("[[say:hi]]", model=name))
                assert response.status_code == 200, response.text
        served = [a - b for a, b in zip(fleet.counts(), before, strict=True)]
        assert served == ([0, 2, 2] if variables == "urls" else [0, 4, 0])
    finally:
        gateway.process.terminate()
        gateway.process.wait(10)


def _refused(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


def test_dev_tritons_listen_on_their_own_address_only(fleet):
    """Three on one port, on 127.0.0.1-3: none holds every interface (0.0.0.0)."""
    for server in fleet.servers:
        assert not _refused(server.host, server.grpc_port)
        assert server.grpc_url == f"{server.host}:{server.grpc_port}"
    assert _refused("127.0.0.4", fleet.port)


def test_the_dev_triton_binds_loopback_by_default():
    assert DevTriton().host == "127.0.0.1"
    parser = DevTritonCommand().create_parser("manage.py", "devtriton")
    assert parser.parse_args([]).host == "127.0.0.1"
    assert parser.parse_args(["--host", "127.0.0.2"]).host == "127.0.0.2"
