"""Run a real ``tritonserver`` serving the scripted TensorRT-LLM look-alike model.

The binary, the Python backend and its stubs come from the ``nvidia-pytriton`` wheel;
see platform/triton/README.md for why each environment detail below is needed.

    with DevTriton(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as dev:
        client = tritonclient.grpc.InferenceServerClient(dev.grpc_url)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_MODELS_DIR = REPO_ROOT / "platform" / "triton" / "dev"
TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class ModelSource:
    """Where a model kind lives under platform/triton/dev/ and which config it uses."""

    directory: str
    config: str
    parameters: tuple[tuple[str, str], ...] = ()


# Model kinds a DevTriton can serve. Qwen-VL is a pair, `<name>-visual` (the encoder) and
# `<name>-llm` (any tensorrt_llm kind: all of them read prompt_embedding_table).
# The recent interface guides decoding, as TensorRT-LLM does with guided_decoding_backend
# set (the dev model emulates xgrammar for json and json_schema guides).
RECENT = (("exclude_input_in_output", "false"), ("guided_decoding_backend", "xgrammar"))
MODEL_SOURCES: dict[str, ModelSource] = {
    "0.8": ModelSource("tensorrt_llm", "config.0.8.pbtxt", (("exclude_input_in_output", "false"),)),
    "recent": ModelSource("tensorrt_llm", "config.recent.pbtxt", RECENT),
    "qwen_vl_visual": ModelSource("qwen_vl_visual", "config.pbtxt"),
    "qwen_vl_llm": ModelSource("tensorrt_llm", "config.recent.pbtxt", RECENT),
}


def _tokenizer_config() -> dict[str, Any]:
    return json.loads((TOKENIZER_DIR / "config.json").read_text(encoding="utf-8"))


def free_port(hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """A TCP port that was free a moment ago on every address of `hosts` (another
    process may still take it): several dev Tritons on 127.0.0.1, 127.0.0.2, ... can
    then listen on the same port, as the pods of one Service do."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((hosts[0], 0))
            port = int(sock.getsockname()[1])
        if all(_bindable(host, port) for host in hosts[1:]):
            return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _kill_group(pgid: int) -> None:
    """Kill what is left of a tritonserver's session: its Python backend stubs.

    The server runs in a session of its own (its pid is the group id), and its stubs
    outlive it when it dies without a clean stop (SIGKILL, a crash); left alone they
    spin on their shared memory and eat a core each."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def pytriton_dir() -> Path:
    import pytriton  # noqa: PLC0415 - only needed when a server is started

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM tritonserver when the thread that started it dies.

    Without this a crashed test run leaves servers holding ports. The signal is tied to
    the starting *thread*, so start DevTriton from a thread that lives as long as it.
    """
    try:
        import ctypes  # noqa: PLC0415

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


class DevTritonError(RuntimeError):
    """tritonserver did not come up (the message carries the log tail)."""


# Every DevTriton started and not stopped, for whoever must watch them (the tests do).
RUNNING: weakref.WeakSet[DevTriton] = weakref.WeakSet()


class DevTriton:
    """A tritonserver process with the dev models, usable as a context manager."""

    def __init__(
        self,
        *,
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        models: dict[str, str] | None = None,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
    ) -> None:
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        # Where all three servers listen: loopback by default, never every interface unless
        # asked. Other loopback addresses (127.0.0.2, ...) let several run on the same ports.
        self.host = host
        self.models = dict(models or {"tensorrt_llm": "recent"})
        unknown = {kind for kind in self.models.values() if kind not in MODEL_SOURCES}
        if unknown:
            raise ValueError(
                f"unknown model kinds {sorted(unknown)}; choose from {sorted(MODEL_SOURCES)}"
            )
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="devtriton-")).resolve()
        self.process: subprocess.Popen[bytes] | None = None
        # More tritonserver flags (a test's --trace-config, say).
        self.extra_args = list(extra_args or ())

    # ---- public API ----------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        return f"{self._reachable_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._reachable_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._reachable_host}:{self.metrics_port}/metrics"

    @property
    def _reachable_host(self) -> str:
        """An address clients can dial: the bound one, or loopback for "every interface"."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def inference_count(self, model: str = "tensorrt_llm") -> int:
        """Successful inference requests of `model` so far, from Triton's own metrics
        (nv_inference_request_success); 0 before the first one."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:  # noqa: S310 - local URL
            text = response.read().decode()
        pattern = (
            rf'^nv_inference_request_success\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$'
        )
        return sum(int(float(value)) for value in re.findall(pattern, text, re.M))

    @property
    def log_path(self) -> Path:
        return self.state_dir / "tritonserver.log"

    @property
    def events_path(self) -> Path:
        return self.state_dir / "events.jsonl"

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> DevTriton:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        backends = self._backend_dir()
        repository = self._model_repository()
        command = [
            str(pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed binary, our own arguments
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,
                # Tied to the starting thread: only safe from the main thread.
                preexec_fn=(
                    _die_with_parent
                    if threading.current_thread() is threading.main_thread()
                    else None
                ),
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        RUNNING.add(self)
        return self

    @property
    def crashed(self) -> bool:
        """Started, not stopped, and its tritonserver has exited."""
        return self.process is not None and self.process.poll() is not None

    def restart(self, timeout: float = STARTUP_TIMEOUT_S) -> DevTriton:
        """Start again on the same ports, state directory and log (after a crash)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if process is not None:
            _kill_group(process.pid)
        return self.start(timeout)

    def stop(self) -> None:
        RUNNING.discard(self)
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None:
            _kill_group(process.pid)
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def events(self) -> list[dict[str, Any]]:
        """Every event the models logged so far, oldest first (a line still being
        written, without its newline yet, is left for the next call)."""
        try:
            text = self.events_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # the last item is "" or an unfinished line
        return [json.loads(line) for line in lines if line.strip()]

    def wait_for_event(self, event: str, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for item in self.events():
                if item.get("event") == event and item.get("request_id") == request_id:
                    return item
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {event!r} event for request {request_id!r} within {timeout}s"
                )
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> DevTriton:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- assembly --------------------------------------------------------------------------

    def _backend_dir(self) -> Path:
        """backends/python = the wheel's python backend plus the stub for this Python."""
        target = self.state_dir / "backends" / "python"
        stub = target / "triton_python_backend_stub"
        if not stub.exists():
            source = pytriton_dir()
            shutil.copytree(source / "backends" / "python", target, dirs_exist_ok=True)
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            shutil.copy2(
                source / "python_backend_stubs" / version / "triton_python_backend_stub", stub
            )
        return target.parent

    def _model_repository(self) -> Path:
        repository = self.state_dir / "models"
        shutil.rmtree(repository, ignore_errors=True)
        for name, kind in self.models.items():
            self._write_model(repository / name, name, MODEL_SOURCES[kind])
        return repository

    def _write_model(self, target: Path, name: str, source: ModelSource) -> None:
        source_dir = DEV_MODELS_DIR / source.directory
        values = {
            "model_name": name,
            "tokenizer_dir": str(TOKENIZER_DIR),
            "state_dir": str(self.state_dir),
            # The visual encoder's output width is the demo LLM's hidden size.
            "hidden_size": str(_tokenizer_config()["hidden_size"]),
            **dict(source.parameters),
        }
        template = Template((source_dir / source.config).read_text(encoding="utf-8"))
        (target / "1").mkdir(parents=True)
        (target / "config.pbtxt").write_text(template.substitute(values), encoding="utf-8")
        shutil.copy2(source_dir / "1" / "model.py", target / "1" / "model.py")

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub must load this interpreter's libpython, not the distribution's (see README).
        libs = [
            sysconfig.get_config_var("LIBDIR"),
            str(pytriton_dir().parent.parent / "nvidia_pytriton.libs"),
        ]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(
            os.pathsep
        )
        # The stub's interpreter takes its packages from the first python3 on PATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)
        return env

    # ---- readiness -------------------------------------------------------------------------

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        paths = ["/v2/health/ready", *(f"/v2/models/{name}/ready" for name in self.models)]
        urls = [self.http_url + path for path in paths] + [self.metrics_url]
        while not all(self._http_ok(url) for url in urls):
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise DevTritonError(f"tritonserver exited with {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DevTritonError(
                    f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _http_ok(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - local URL
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False
