"""The README's demo command, end to end: it prints a key and curl lines that work, it
answers an image, the README's own snippets run against it as written (with the key it
printed), and stopping it stops its tritonserver."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmgateway.devtriton.server import free_port
from tests.conftest import ROOT
from tests.test_cli import own_options

README = ROOT / "README.md"
# Started with three Python-backend models on a shared, loaded machine.
STARTUP_S = 180


@dataclass
class Demo:
    process: subprocess.Popen
    port: int
    banner: str
    key: str

    @property
    def base(self) -> str:
        return f"http://localhost:{self.port}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    """`manage.py demo` on a free port and a SQLite file of its own, until its banner."""
    tmp = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "SQLITE_PATH": str(tmp / "demo.sqlite3"),
        "REDIS_URL": "",
    }
    log = (tmp / "demo.log").open("w+")
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
        deadline = time.monotonic() + STARTUP_S
        while "Uvicorn running" not in banner and time.monotonic() < deadline:
            assert process.poll() is None, banner
            time.sleep(0.3)
            log.seek(0)
            banner = log.read()
        assert "Uvicorn running" in banner, banner
        key = re.search(r"API key:\s+(sk-\S+)", banner).group(1)
        yield Demo(process, port, banner, key)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _curls(banner: str) -> list[str]:
    return [line.strip() for line in banner.splitlines() if line.strip().startswith("curl ")]


def test_demo_serves_generate_with_the_printed_key(demo):
    curl = re.search(
        r"curl -X POST (\S+) -H \"Authorization: Bearer (\S+)\" -d '(.+)'", demo.banner
    )
    assert curl.group(1) == f"{demo.base}/generate"
    assert curl.group(2) == demo.key
    response = httpx.post(
        curl.group(1),
        content=curl.group(3),
        headers={
            "authorization": f"Bearer {demo.key}",
            "content-type": "application/x-www-form-urlencoded",  # what curl -d sends
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert "dev Triton scripted model" in response.json()["text"]
    password = re.search(r"password (\S+)", demo.banner).group(1)
    login = httpx.get(f"{demo.base}/admin/login/", timeout=10)
    assert login.status_code == 200 and password


def test_every_curl_the_demo_prints_answers(demo):
    curls = _curls(demo.banner)
    assert len(curls) == 4, demo.banner
    replies = [_run(["bash", "-c", f"{curl} -sS --fail-with-body"]) for curl in curls]
    assert "dev Triton scripted model" in replies[0]
    assert '"chat.completion"' in replies[1]
    assert "Picture 1 is mostly red." in replies[2]  # the image, through the Qwen-VL pair
    assert '"type":"reasoning"' in replies[3] and '"text":"Hello!"' in replies[3]


def test_the_demo_answers_an_image_request(demo):
    with httpx.Client(base_url=demo.base, timeout=30) as client:
        models = client.get("/v1/models", headers={"authorization": f"Bearer {demo.key}"})
        from llmgateway.management.commands.demo import RED_PNG, VISION_MODEL

        body = {
            "model": VISION_MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in the picture?"},
                        {"type": "image_url", "image_url": {"url": RED_PNG}},
                    ],
                }
            ],
        }
        reply = client.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {demo.key}"}
        )
    assert {m["id"] for m in models.json()["data"]} == {"qwen1.5-chat", "qwen3-think", VISION_MODEL}
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "Picture 1 is mostly red."
    assert reply.json()["usage"]["prompt_tokens"] > 256  # the image's positions


# ---- the README, run as written -------------------------------------------------------------


def readme_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`, in order."""
    text = README.read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(rf"```{language}\n(.*?)```", text, re.S)]


def _on_port(snippet: str, port: int) -> str:
    """The snippet against the demo under test: its port, the only change."""
    assert "localhost:9900" in snippet
    return snippet.replace("localhost:9900", f"localhost:{port}")


def _run(command: list[str], **kwargs) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_readme_shell_snippets_run_as_written(demo):
    blocks = readme_blocks("sh")
    (define,) = [b for b in blocks if b.startswith("export KEY=")]
    assert define.startswith("export KEY=sk-gw-...")  # where the reader pastes the key
    requests = [b for b in blocks if "localhost:9900" in b]
    assert len(requests) >= 2
    outputs = []
    for block in requests:
        # What the reader does: paste the printed key into the export line, then the block.
        script = define.replace("sk-gw-...", demo.key, 1) + _on_port(block, demo.port)
        outputs.append(_run(["bash", "-euo", "pipefail", "-c", script]))
    everything = "\n".join(outputs)
    assert '"error"' not in everything, everything
    assert everything.count("dev Triton scripted model") >= 2, everything  # plain, streamed
    assert "data: [DONE]" in everything and '"texts"' in everything
    assert "Picture 1 is mostly red." in everything


def test_the_readme_python_snippets_run_as_written(demo, tmp_path):
    blocks = readme_blocks("python")
    assert len(blocks) >= 2
    script = tmp_path / "readme.py"
    # One session, as a reader pasting them in turn: the later blocks use `client`.
    script.write_text("\n".join(_on_port(b, demo.port) if "9900" in b else b for b in blocks))
    output = _run([sys.executable, str(script)], env={**os.environ, "KEY": demo.key})
    lines = output.splitlines()
    assert "dev Triton scripted model" in lines[0]  # the reply, printed
    assert lines[1].strip(), output  # the streamed reply
    assert re.search(r"city='[^']*' temperature_c=-?\d+", output), output  # the parsed object
    assert "['reasoning', 'message'] Hello!" in output  # the Responses API, reasoning apart


def test_stopping_the_demo_stops_its_tritonserver(demo):
    grpc_port = int(re.search(r"dev Triton: grpc 127\.0\.0\.1:(\d+)", demo.banner).group(1))
    assert _listening(grpc_port)
    # What an operator's Ctrl-C or `kill` does: the dev Triton goes with the demo.
    os.killpg(demo.process.pid, signal.SIGTERM)
    demo.process.wait(30)
    deadline = time.monotonic() + 15
    while _listening(grpc_port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening(grpc_port), "the demo left its tritonserver running"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ---- scripts/demo.sh --help ------------------------------------------------------------------


def test_demo_sh_help_answers_without_installing(tmp_path):
    """On a fresh clone (no .venv): the help is printed and nothing is installed."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "demo.sh").write_text((ROOT / "scripts" / "demo.sh").read_text())
    marker = tmp_path / "installed"
    (scripts / "bootstrap.sh").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    for flag in ("--help", "-h"):
        shown = _run(["bash", str(scripts / "demo.sh"), "--port", "9901", flag])
        assert not marker.exists(), "demo.sh --help ran the installer"
        assert not Path(tmp_path / ".venv").exists()
        assert shown.startswith("usage: scripts/demo.sh")
    # It lists every option of `manage.py demo`, with its default.
    from llmgateway.management.commands.demo import Command

    parser = Command().create_parser("manage.py", "demo")
    for action in own_options(parser):
        assert action.option_strings[0] in shown, action.option_strings
        assert str(action.default) in shown, (action.option_strings, action.default)
