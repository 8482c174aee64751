"""The README's demo command, end to end: it prints a key and a curl line that work."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from llmgateway.devtriton.server import free_port
from tests.conftest import ROOT


def test_demo_serves_generate_with_the_printed_key(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "SQLITE_PATH": str(tmp_path / "demo.sqlite3"),
        "REDIS_URL": "",
    }
    log = (tmp_path / "demo.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        banner = ""
        deadline = time.monotonic() + 90
        while "Uvicorn running" not in banner and time.monotonic() < deadline:
            assert process.poll() is None, banner
            time.sleep(0.3)
            log.seek(0)
            banner = log.read()
        key = re.search(r"API key:\s+(sk-\S+)", banner).group(1)
        password = re.search(r"password (\S+)", banner).group(1)
        curl = re.search(r"curl -X POST (\S+) -H \"Authorization: Bearer (\S+)\"", banner)
        assert curl.group(1) == f"http://localhost:{port}/generate"
        assert curl.group(2) == key
        response = httpx.post(
            curl.group(1),
            content='{"prompt": "who are you?"}',
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "application/x-www-form-urlencoded",
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert "dev Triton scripted model" in response.json()["text"]
        login = httpx.get(f"http://localhost:{port}/admin/login/", timeout=10)
        assert login.status_code == 200 and password
        grpc_port = int(re.search(r"dev Triton: grpc 127\.0\.0\.1:(\d+)", banner).group(1))
        # What an operator's Ctrl-C or `kill` does: the dev Triton goes with the demo.
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        deadline = time.monotonic() + 15
        while _listening(grpc_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _listening(grpc_port), "the demo left its tritonserver running"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
