"""Real faults for the fault tests: a TCP proxy in front of PostgreSQL that the test kills
or pauses, and a Redis server the test starts and stops. Never mocks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from llmgateway.devtriton.server import free_port

PROXY_SCRIPT = Path(__file__).with_name("tcp_proxy.py")


def _wait_port(port: int, process: subprocess.Popen, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {seconds} s")


class TcpProxy:
    """127.0.0.1:<port> forwarding to target; `kill`, `pause`, `resume`, `start`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(PROXY_SCRIPT), str(self.port), *map(str, self.target)],
            stdout=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.process)

    def kill(self) -> None:
        """Refused: every connection reset, new ones refused."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)  # a paused one dies only when resumed
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def pause(self) -> None:
        """Hung: connections are accepted and data buffered, but nothing goes through."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


class RedisServer:
    """A redis-server of the test's own on a free port, its data in an append-only file
    fsynced on every write (so a kill loses nothing, as a persistent Redis would)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port, self.process)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
