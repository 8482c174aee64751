"""The README's demo command, end to end: it prints a key and a curl line that work."""

from __future__ import annotations

import os
import re
import signal
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
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
