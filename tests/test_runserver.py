"""`manage.py runserver`: the ASGI app under uvicorn, streaming as in production.

Django's own runserver (WSGI) would pass the parsing tests' interface but buffer every
stream whole; the streaming test is the one that tells them apart.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command, get_commands

from llmgateway.devtriton.server import free_port
from tests.conftest import CHAT_MODEL, ROOT, LiveGateway, _database_env, gateway_wait

# 30 tokens 50 ms apart: about 1.5 s from the first token to the last.
SLOW = "[[delay:50]][[long:30]]"


def start_runserver(tmp_dir: Path, *args: str, api_key: str | None = None) -> LiveGateway:
    """`manage.py runserver 127.0.0.1:PORT *args` in its own process group."""
    port = free_port()
    log_path = tmp_dir / f"runserver-{port}.log"
    env = {
        **os.environ,
        **_database_env(),
        "MODEL_CACHE_SECONDS": "0",
        "DJANGO_SETTINGS_MODULE": "llmgateway.settings",
    }
    command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the reloader's children go with a killpg
        )
    server = LiveGateway(f"http://127.0.0.1:{port}", process, log_path, api_key)
    try:
        return gateway_wait(server, 60, "runserver")
    except RuntimeError:
        kill_group(process)
        raise


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(pgid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not group_alive(pgid)


@pytest.fixture(scope="module")
def dev_server(model_configs, owner_key, tmp_path_factory) -> Iterator[LiveGateway]:
    server = start_runserver(tmp_path_factory.mktemp("runserver"), "--noreload", api_key=owner_key)
    try:
        yield server
    finally:
        os.killpg(server.process.pid, signal.SIGINT)
        try:
            server.process.wait(30)
        finally:
            kill_group(server.process)


def _content(path: str, line: str) -> str:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return ""
    payload = json.loads(line.removeprefix("data: "))
    if path == "/generate":
        return payload.get("text") or ""
    return "".join(choice["delta"].get("content") or "" for choice in payload["choices"])


@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate", {"model": CHAT_MODEL, "prompt": SLOW, "stream": True}),
        (
            "/v1/chat/completions",
            {"model": CHAT_MODEL, "messages": [{"role": "user", "content": SLOW}], "stream": True},
        ),
    ],
)
def test_stream_chunks_arrive_as_they_are_generated(dev_server, path, body):
    arrivals: list[tuple[float, str]] = []
    with dev_server.client() as client, client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line))
    assert arrivals[-1][1] == "data: [DONE]"
    content = [(at, text) for at, line in arrivals if (text := _content(path, line))]
    assert len(content) > 10
    # Buffered (Django's WSGI runserver), every line arrives within a few milliseconds.
    spread = arrivals[-1][0] - content[0][0]
    assert spread >= 0.5, f"first content only {spread:.3f} s before the end of the stream"


def test_health_answers_and_banner_names_the_server(dev_server):
    assert httpx.get(dev_server.url + "/health", timeout=10).status_code == 200
    log = dev_server.log_path.read_text(errors="replace")
    assert f"Starting development server at {dev_server.url}/" in log
    assert "System check identified no issues" in log
    assert "Django version" in log and "Quit the server with CONTROL-C." in log
    assert "Uvicorn running" in log


def test_log_lines_carry_the_request_id(dev_server):
    """Text format (the default): uvicorn's access line and the gateway's own, each with
    the request's fields appended; the admin's requests get their access line too, and
    probes only uvicorn's (the gateway's is at DEBUG)."""
    assert httpx.get(dev_server.url + "/health", headers={"x-request-id": "rs-health"}).is_success
    with dev_server.client() as client:
        assert client.get("/v1/models", headers={"x-request-id": "rs-models"}).is_success
    login = httpx.get(dev_server.url + "/admin/login/", headers={"x-request-id": "rs-admin"})
    assert login.status_code == 200
    deadline = time.monotonic() + 5
    while "rs-admin" not in dev_server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = dev_server.log_path.read_text(errors="replace").splitlines()
    uvicorn = [line for line in lines if " uvicorn.access " in line and "rs-health" in line]
    assert uvicorn and uvicorn[0].endswith("[request_id=rs-health route=/health]")
    assert not [line for line in lines if " llmgateway.access GET /health " in line]
    ours = [line for line in lines if " llmgateway.access GET /v1/models 200 " in line]
    assert ours and "request_id=rs-models" in ours[0] and "route=/v1/models" in ours[0]
    admin = [line for line in lines if " llmgateway.access GET /admin/login/ 200 " in line]
    assert admin and "request_id=rs-admin" in admin[0]


def test_admin_login_page_loads_its_css(dev_server):
    login = httpx.get(dev_server.url + "/admin/login/", timeout=10)
    assert login.status_code == 200
    stylesheet = re.search(r'href="(/static/admin/css/[^"]+\.css)"', login.text).group(1)
    css = httpx.get(dev_server.url + stylesheet, timeout=10)
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_noreload_stops_gracefully_on_signal(django_db_setup, tmp_path, sig):
    server = start_runserver(tmp_path, "--noreload")
    try:
        os.kill(server.process.pid, sig)
        returncode = server.process.wait(30)
    finally:
        kill_group(server.process)
    log = server.log_path.read_text(errors="replace")
    # SIGINT: exit 0, as Django's runserver. SIGTERM: uvicorn re-raises it once shut down.
    assert returncode in (0, -sig), log
    assert "Application shutdown complete." in log
    assert "Traceback" not in log, log


def test_reload_mode_serves_from_a_child_and_stops_with_it(django_db_setup, tmp_path):
    server = start_runserver(tmp_path)  # no --noreload
    try:
        log = server.log_path.read_text(errors="replace")
        assert "Started reloader process" in log and "auto-reload on" in log
        supervisor = server.process.pid
        assert re.search(rf"Started server process \[(?!{supervisor}\])\d+\]", log), log
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(supervisor, signal.SIGINT)
        assert server.process.wait(30) == 0
        assert wait_group_gone(supervisor), "a runserver child outlived the reloader"
    finally:
        kill_group(server.process)
    log = server.log_path.read_text(errors="replace")
    assert "Stopping reloader process" in log and "Traceback" not in log, log


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, host, port, url",
    [
        ([], "127.0.0.1", 8000, "http://127.0.0.1:8000/"),
        (["9001"], "127.0.0.1", 9001, "http://127.0.0.1:9001/"),
        (["0.0.0.0:9001"], "0.0.0.0", 9001, "http://0.0.0.0:9001/"),
        (["0:9001"], "0.0.0.0", 9001, "http://0.0.0.0:9001/"),
        (["[::1]:9001"], "::1", 9001, "http://[::1]:9001/"),
        (["-6"], "::1", 8000, "http://[::1]:8000/"),
        (["--ipv6", "9001"], "::1", 9001, "http://[::1]:9001/"),
    ],
)
def test_addrport_as_django_parses_it(monkeypatch, args, host, port, url):
    calls, banner = _run_in_process(monkeypatch, *args)
    assert calls == [{"host": host, "port": port, "workers": 1, "access_log": True, "reload": True}]
    assert f"Starting development server at {url}\n" in banner


@pytest.mark.django_db
def test_noreload_and_nothreading(monkeypatch):
    calls, banner = _run_in_process(monkeypatch, "--noreload", "--nothreading", "9001")
    assert calls[0]["reload"] is False
    assert "auto-reload off" in banner


def _run_in_process(monkeypatch, *args: str) -> tuple[list[dict], str]:
    """Run the command here with uvicorn replaced: run_uvicorn's calls, and the output."""
    # If staticfiles' runserver won, call_command would serve for real (and hang).
    assert get_commands()["runserver"] == "llmgateway"
    calls: list[dict] = []
    monkeypatch.setattr(
        "llmgateway.management.commands.runserver.run_uvicorn",
        lambda **kwargs: calls.append(kwargs),
    )
    out = io.StringIO()
    call_command("runserver", *args, stdout=out, skip_checks=False)
    assert "System check identified no issues" in out.getvalue()
    return calls, out.getvalue()


def test_static_files_are_served_without_the_sync_iterator_warning(dev_server):
    login = httpx.get(dev_server.url + "/admin/login/", timeout=10)
    stylesheet = re.search(r'href="(/static/admin/css/[^"]+\.css)"', login.text).group(1)
    css = httpx.get(dev_server.url + stylesheet, timeout=10)
    assert css.status_code == 200 and b"{" in css.content
    time.sleep(0.2)
    assert "must consume synchronous iterators" not in dev_server.log_tail(400)
