"""Shared fixtures: a live dev Triton, model configs, and a live gateway (uvicorn).

Everything is real: the `tritonserver` binary with the scripted TensorRT-LLM
models, the configured database (SQLite by default, PostgreSQL when
DATABASE_URL is set), and the gateway under uvicorn in a subprocess.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _pytest.runner import runtestprotocol
from django.db import connection

from llmgateway.devtriton import server as devtriton_server
from llmgateway.devtriton.server import DevTriton, free_port
from llmgateway.devtriton.stack import GatewayDown, dev_triton, gateway_spawn
from llmgateway.devtriton.stack import gateway_wait as stack_gateway_wait

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "llmgateway" / "devtriton" / "tokenizer")
ARTIFACTS = ROOT / "test-artifacts"

# Public model names the live gateway serves.
CHAT_MODEL = "dev-chat"  # recent TensorRT-LLM interface
V08_MODEL = "dev-chat-v08"  # TensorRT-LLM 0.8 (Triton 24.02) interface
DOWN_MODEL = "dev-down"  # points at a port where no Triton listens


@pytest.fixture(scope="session")
def devtriton(tmp_path_factory) -> Iterator[DevTriton]:
    server = dev_triton(
        models={"tensorrt_llm": "recent", "tensorrt_llm_v08": "0.8"},
        state_dir=tmp_path_factory.mktemp("devtriton"),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _database_env() -> dict[str, str]:
    """Environment that points a child process at the test database."""
    settings = connection.settings_dict
    if settings["ENGINE"].endswith("sqlite3"):
        return {"DATABASE_URL": "", "SQLITE_PATH": str(settings["NAME"])}
    user = settings.get("USER") or ""
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or "5432"
    return {"DATABASE_URL": f"postgres://{auth}{host}:{port}/{settings['NAME']}"}


# Limits the dev models share: room for the long-output tests.
DEV_LIMITS = {"context_length": 4096, "max_output_tokens": 4000, "default_max_tokens": 256}


@pytest.fixture
def admin_user(db, django_user_model):
    """pytest-django's admin_user ("admin", password "password"), written before anything
    is read. Its own looks the user up first: in this process's deferred SQLite
    transaction, a read then a write fails at once ("database is locked") when a live
    gateway commits a request log in between (CI met it once). A first write waits for
    that commit instead."""
    from django.db import IntegrityError, transaction

    manager = django_user_model._default_manager
    try:
        with transaction.atomic():
            return manager.create_superuser(
                username="admin", email="admin@example.com", password="password"
            )
    except IntegrityError:
        return manager.get_by_natural_key("admin")


def model_upsert_committed(**fields):
    """llmgateway.services.model_upsert from this process, run again if SQLite refuses it.

    This process begins its SQLite transactions deferred (see pytest_configure), and
    model_upsert reads the row before writing it: when a live gateway commits a request
    log in between, SQLite refuses the write at once ("database is locked").
    """
    from accounts.quota.database import retry_when_locked
    from llmgateway.services import model_upsert

    return retry_when_locked(model_upsert)(**fields)


def dev_model_upsert(name: str, devtriton, *, triton_model: str = "tensorrt_llm", **fields):
    """Save the model config `name` for a model of the dev Triton (call with the DB open)."""
    return model_upsert_committed(
        name=name,
        triton_url=devtriton.grpc_url,
        triton_model=triton_model,
        **{"tokenizer_path": TOKENIZER, **fields},
    )


@pytest.fixture(scope="session")
def model_configs(django_db_setup, django_db_blocker, devtriton):
    """Committed model rows (visible to the gateway subprocess)."""
    with django_db_blocker.unblock():
        rows = {
            CHAT_MODEL: dev_model_upsert(CHAT_MODEL, devtriton, **DEV_LIMITS),
            V08_MODEL: dev_model_upsert(
                V08_MODEL, devtriton, triton_model="tensorrt_llm_v08", **DEV_LIMITS
            ),
            DOWN_MODEL: model_upsert_committed(
                name=DOWN_MODEL,
                triton_url=f"127.0.0.1:{free_port()}",
                triton_model="tensorrt_llm",
                tokenizer_path=TOKENIZER,
            ),
        }
    return rows


# Secrets of the keys the shared fixtures made: no gateway's log may contain one.
ISSUED_SECRETS: list[str] = []
# Every live gateway's log file this session (start_gateway).
GATEWAY_LOGS: list[Path] = []


@pytest.fixture(scope="session")
def owner_key(django_db_setup, django_db_blocker) -> str:
    """The secret of a committed API key allowed every model, without limits."""
    from accounts.services import key_create, owner_get_or_create

    with django_db_blocker.unblock():
        _, secret = key_create(owner=owner_get_or_create(username="owner"), name="tests: owner")
    ISSUED_SECRETS.append(secret)
    return secret


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_gateway_log() -> Iterator[None]:
    """After the session: no log line of any gateway it started carries a key's secret
    (tests/test_logs.py checks prompts too, at DEBUG)."""
    yield
    for path in GATEWAY_LOGS:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        leaked = [secret[:12] + "..." for secret in ISSUED_SECRETS if secret in text]
        assert not leaked, f"{path}: a key's secret in the log ({leaked})"


class LiveGateway:
    def __init__(
        self, url: str, process: subprocess.Popen, log_path: Path, api_key: str | None = None
    ) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path
        # The owner key's secret: what `client()` (and the `http` fixture) send by default.
        self.api_key = api_key

    def client(self, *, api_key: str | None = "", **kwargs) -> httpx.Client:
        """An httpx client sending `api_key` (default: the owner key; None: no key)."""
        key = self.api_key if api_key == "" else api_key
        headers = dict(kwargs.pop("headers", None) or {})
        if key:
            headers.setdefault("authorization", f"Bearer {key}")
        return httpx.Client(base_url=self.url, timeout=30, headers=headers, **kwargs)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# Gateways started by start_gateway and not stopped yet.
RUNNING_GATEWAYS: set[LiveGateway] = set()


def start_gateway(
    tmp_dir: Path, extra_env: dict[str, str] | None = None, *, api_key: str | None = None
) -> LiveGateway:
    port = free_port()
    log_path = tmp_dir / f"gateway-{port}.log"
    env = {
        **_database_env(),
        "MODEL_CACHE_SECONDS": "0",
        # Gateways of one test share a spool directory, as replicas on one host would.
        "GATEWAY_SPOOL_DIR": str(tmp_dir / "spool"),
        **(extra_env or {}),
    }
    process = gateway_spawn(port, env, output=log_path.open("wb"))
    GATEWAY_LOGS.append(log_path)
    gateway = LiveGateway(f"http://127.0.0.1:{port}", process, log_path, api_key)
    try:
        gateway_wait(gateway, 30, "gateway")
    except RuntimeError:
        process.kill()
        raise
    RUNNING_GATEWAYS.add(gateway)
    return gateway


def gateway_wait(gateway: LiveGateway, seconds: float, what: str) -> LiveGateway:
    """Return `gateway` once it answers /health; RuntimeError with its log tail if its
    process exits first or `seconds` pass (the caller stops the process)."""
    try:
        stack_gateway_wait(gateway.url, gateway.process, seconds)
    except GatewayDown as exc:
        raise RuntimeError(f"{what} {exc}:\n{gateway.log_tail()}") from None
    return gateway


def stop_gateway(gateway: LiveGateway) -> None:
    RUNNING_GATEWAYS.discard(gateway)
    gateway.process.terminate()
    try:
        gateway.process.wait(10)
    except subprocess.TimeoutExpired:
        gateway.process.kill()


@contextlib.contextmanager
def gateway_running(
    tmp_dir: Path, extra_env: dict[str, str] | None = None, *, api_key: str | None = None
) -> Iterator[LiveGateway]:
    """start_gateway for the length of a `with` block (a fixture's yield)."""
    gateway = start_gateway(tmp_dir, extra_env, api_key=api_key)
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


@pytest.fixture(scope="session")
def live_gateway(model_configs, owner_key, tmp_path_factory) -> Iterator[LiveGateway]:
    with gateway_running(tmp_path_factory.mktemp("gateway"), api_key=owner_key) as gateway:
        yield gateway


@pytest.fixture
def http(live_gateway) -> Iterator[httpx.Client]:
    with live_gateway.client() as client:
        yield client


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "committed_db: no test transaction; the test commits what it writes"
    )
    # Spool files (accounts/quota/spool.py) of this test process: never the worktree's.
    import tempfile

    from django.conf import settings as django_settings

    django_settings.GATEWAY_SPOOL_DIR = tempfile.mkdtemp(prefix="gateway-spool-")
    # The servers' SQLite transactions are IMMEDIATE (settings.SQLITE_OPTIONS). Here each
    # test runs inside a transaction of its own, which would then hold the write lock
    # for the whole test and stall the live gateway's writes; so this process begins
    # its transactions deferred. (A copy: the servers' options stay as they are.)
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database["OPTIONS"] = {**database["OPTIONS"], "transaction_mode": "DEFERRED"}
    # pytest-django sets up the test database only for the aliases its marked tests
    # ask for; a committed_db test has no django_db mark, so ask for "default" here
    # (otherwise, run alone, it would reach the development database).
    from pytest_django import fixtures as pytest_django_fixtures

    databases_for = pytest_django_fixtures._get_databases_for_test

    def databases_for_test(test: pytest.Item):
        if test.get_closest_marker("committed_db"):
            return ("default",), False
        return databases_for(test)

    pytest_django_fixtures._get_databases_for_test = databases_for_test


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest-django creates the test database only when a collected test asks for
    # one; tests that talk to the live gateway need it even if they never query.
    for item in items:
        if item.get_closest_marker("committed_db"):
            continue  # commits its own rows for the gateway to see (tests/accounts)
        if {"model_configs", "live_gateway", "http"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.django_db)


# ---- a dev Triton that crashes ------------------------------------------------------------


def _recover(config: pytest.Config, crashed: list[DevTriton], during: str) -> None:
    """Restart crashed dev Tritons, then wait until every running gateway reaches one again
    (a gRPC channel whose server went away reconnects after a backoff)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for server in crashed:
        tail = server.log_path.read_text(errors="replace").splitlines()[-12:]
        if reporter is not None:
            reporter.write_line(
                f"\ndev Triton at {server.grpc_url} crashed during {during}; restarting it. "
                "Log tail:\n  " + "\n  ".join(tail),
                yellow=True,
            )
        server.restart()
    deadline = time.monotonic() + 30
    for gateway in list(RUNNING_GATEWAYS):
        while time.monotonic() < deadline:
            try:
                if httpx.get(gateway.url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Run each test, and once more if a dev Triton crashed while it ran.

    tritonserver 2.51, the newest that nvidia-pytriton ships (0.7.0), can die with SIGSEGV
    when a request is cancelled just as it completes: a race in Triton's gRPC handling
    (triton-inference-server/server #7840, #8034; fixed in later releases). The gateway
    cancels requests by design (stop strings, n fan-out, clients that leave), so a long
    run can meet it. Then the server is restarted and the test that was running gets a
    second run; the crash and its log tail are printed, and a test failing for its own
    reasons still fails: only a crash earns the rerun.
    """
    crashed = [server for server in list(devtriton_server.RUNNING) if server.crashed]
    if crashed:  # it died between tests
        _recover(item.config, crashed, f"the test before {item.nodeid}")
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    crashed = [server for server in list(devtriton_server.RUNNING) if server.crashed]
    if crashed and any(report.failed for report in reports) and not reports[0].failed:
        _recover(item.config, crashed, item.nodeid)
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
