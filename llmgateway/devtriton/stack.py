"""The dev stack as the tests (tests/conftest.py) and the benches (bench/common.py) start
it: a dev Triton on free ports, and gateway workers under uvicorn, each waited for
until it answers /health."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from llmgateway.devtriton.server import DevTriton, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_START_SECONDS = 30.0


def dev_triton(*, models: dict[str, str] | None = None, state_dir: Path | None = None) -> DevTriton:
    """A dev Triton (not started yet) serving `models` on ports free a moment ago."""
    return DevTriton(
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        models=models,
        state_dir=state_dir,
    )


def gateway_spawn(
    port: int,
    env: dict[str, str],
    *,
    root: Path = REPO_ROOT,
    lifespan: str = "on",
    quiet: bool = False,
    output: IO[bytes] | None = None,
) -> subprocess.Popen:
    """A uvicorn worker serving the gateway from checkout `root` on 127.0.0.1:`port`, with
    `env` over this process's environment (not waited for: see `gateway_wait`).

    `lifespan` "auto" also starts versions from before the gateway spoke the lifespan
    protocol; `quiet` keeps uvicorn's log to warnings; `output` takes stdout and stderr.
    """
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "llmgateway.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        lifespan,
        "--no-access-log",
    ]
    if quiet:
        command += ["--log-level", "warning"]
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "llmgateway.settings", **env}
    if root != REPO_ROOT:
        full_env["PYTHONPATH"] = str(root)
    stderr = subprocess.STDOUT if output is not None else None
    return subprocess.Popen(command, cwd=root, env=full_env, stdout=output, stderr=stderr)


class GatewayDown(RuntimeError):
    """A gateway's process exited, or it did not answer /health in time."""


def gateway_wait(
    url: str, process: subprocess.Popen, seconds: float = GATEWAY_START_SECONDS
) -> None:
    """Return once the gateway at `url` answers /health; GatewayDown ("exited", "did not
    start") if its process exits first or `seconds` pass. The caller stops the process."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise GatewayDown("exited")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise GatewayDown("did not start")
