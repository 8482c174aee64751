"""Shared pieces of the benchmarks: starting the stack, load loops, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")
# One secret for the bench process and its gateways: API keys are hashed with it.
os.environ.setdefault("SECRET_KEY", "bench-secret-key")
TOKENIZER = str(ROOT / "llmgateway" / "devtriton" / "tokenizer")


@dataclass
class Result:
    name: str
    latencies: list[float]
    elapsed: float
    cpu_seconds: float = 0.0  # of the process named in compare(cpu_pids=...), if any

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_seconds / len(self.latencies) * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p95(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.95) - 1] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed


async def run_load(
    call: Callable[[], Awaitable[None]], *, concurrency: int, requests: int, warmup: int = 20
) -> tuple[list[float], float]:
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


@contextlib.asynccontextmanager
async def dev_stack(
    workdir: Path,
    *,
    models: dict[str, str] | None = None,
    name: str = "bench",
    triton_model: str = "tensorrt_llm",
    **model_fields,
) -> AsyncIterator:
    """A dev Triton under `workdir` and the model config `name` pointing at its
    `triton_model`, for the gateways and the direct calls of one bench run."""
    from llmgateway.devtriton.stack import dev_triton
    from llmgateway.services import model_upsert

    with dev_triton(models=models, state_dir=workdir / "triton") as triton:
        await asyncio.to_thread(
            model_upsert,
            name=name,
            triton_url=triton.grpc_url,
            triton_model=triton_model,
            tokenizer_path=TOKENIZER,
            **model_fields,
        )
        yield triton


@contextlib.asynccontextmanager
async def fleet_extend(triton, count: int, workdir: Path, *, name: str = "bench") -> AsyncIterator:
    """Serve the model config `name` from `count` dev Tritons: `triton` (on 127.0.0.1) and
    count - 1 more on 127.0.0.2, ... with the same ports (as the pods of one Service)."""
    from llmgateway.devtriton.server import DevTriton
    from llmgateway.services import model_upsert

    extra = [
        DevTriton(
            host=f"127.0.0.{index + 2}",
            grpc_port=triton.grpc_port,
            http_port=triton.http_port,
            metrics_port=triton.metrics_port,
            models=triton.models,
            state_dir=workdir / f"triton-{index + 2}",
        )
        for index in range(count - 1)
    ]
    try:
        for server in extra:
            await asyncio.to_thread(server.start)
        if extra:
            addresses = ",".join(s.grpc_url for s in [triton, *extra])
            await asyncio.to_thread(model_upsert, name=name, triton_url=addresses)
        yield [triton, *extra]
    finally:
        for server in extra:
            server.stop()


def http_session(**kwargs) -> aiohttp.ClientSession:
    """An aiohttp session whose idle connections close before the gateway's do.

    uvicorn closes a keep-alive connection after 5 s idle; aiohttp keeps one for 15 s.
    A bench that runs its paths in turns leaves a path's connections idle while the
    others run, and one reused just as uvicorn closes it fails with "Server
    disconnected" (seen once in a bench_platform run). Closing them at 4 s avoids that.
    """
    import aiohttp

    connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=4)
    return aiohttp.ClientSession(connector=connector, **kwargs)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_gateway(
    port: int, db_path: Path, env: dict[str, str] | None = None, *, root: Path = ROOT
) -> subprocess.Popen:
    """A uvicorn worker serving the gateway from `root` (a checkout of some version)."""
    from llmgateway.devtriton.stack import gateway_spawn, gateway_wait

    full_env = {
        "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", ""),
        "SQLITE_PATH": str(db_path),
        "DEBUG": "false",
        "SECRET_KEY": os.environ["SECRET_KEY"],
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    # Lifespan "auto": versions from before the gateway spoke the lifespan protocol start too.
    process = gateway_spawn(port, full_env, root=root, lifespan="auto", quiet=True)
    try:
        gateway_wait(f"http://127.0.0.1:{port}", process)
    except RuntimeError:
        process.kill()
        raise
    return process


def checkout(ref: str) -> Path:
    """A detached worktree of git revision `ref` (a previous version, as a baseline)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="bench-previous-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), ref], cwd=ROOT, check=True
    )
    return path


def checkout_remove(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


async def compare(
    calls: dict[str, Callable[[], Awaitable[None]]],
    *,
    concurrency: int,
    requests: int,
    rounds: int = 5,
    cpu_pids: dict[str, int] | None = None,
) -> dict[str, Result]:
    """Run each path in alternating rounds, so a noisy neighbour hits all of them alike.

    With cpu_pids, the CPU time (user + system) that process spent during a path's
    rounds is recorded: the gateway's own cost, which idle-core wake-ups on a VM do
    not distort the way they distort latency at concurrency 1.
    """
    cpu_pids = cpu_pids or {}
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    elapsed: dict[str, float] = dict.fromkeys(calls, 0.0)
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    for round_number in range(rounds):
        for name, call in calls.items():
            if round_number == 0:
                for _ in range(20):
                    await call()
            pid = cpu_pids.get(name)
            before = cpu_seconds(pid) if pid else 0.0
            lat, seconds = await run_load(
                call, concurrency=concurrency, requests=requests // rounds, warmup=0
            )
            cpu[name] += (cpu_seconds(pid) - before) if pid else 0.0
            latencies[name] += lat
            elapsed[name] += seconds
    return {name: Result(name, latencies[name], elapsed[name], cpu[name]) for name in calls}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup_django(*, platform: bool, sqlite_path: Path | None = None) -> None:
    """Configure Django in the bench process (the gateways get the same settings) and
    migrate. Call through asyncio.to_thread from async code."""
    if sqlite_path is not None:
        os.environ["SQLITE_PATH"] = str(sqlite_path)
    os.environ["GATEWAY_PLATFORM"] = "true" if platform else "false"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def direct_inputs(prompt: str, *, max_tokens: int, streaming: bool) -> list:
    """The TRT-LLM tensors a direct tritonclient call sends for one chat turn."""
    import numpy as np
    import tritonclient.grpc.aio as grpcclient

    from llmgateway.textgen.tokenizer import load_text_model

    text = load_text_model(TOKENIZER)
    ids = np.array(
        [text.encode(text.render_chat([{"role": "user", "content": prompt}]))], dtype=np.int32
    )
    tensors = []
    for name, value in [
        ("input_ids", ids),
        ("input_lengths", np.array([[ids.shape[1]]], dtype=np.int32)),
        ("request_output_len", np.array([[max_tokens]], dtype=np.int32)),
        ("end_id", np.array([[text.end_id]], dtype=np.int32)),
        ("pad_id", np.array([[text.pad_id]], dtype=np.int32)),
        ("streaming", np.array([[streaming]], dtype=bool)),
    ]:
        tensor = grpcclient.InferInput(
            name, value.shape, "BOOL" if value.dtype == bool else "INT32"
        )
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


def direct_call(client, prompt: str, *, max_tokens: int) -> Callable[[], Awaitable[None]]:
    """A non-streamed request straight to Triton's tensorrt_llm model, as a load callable."""

    async def call() -> None:
        async def requests():
            yield {
                "model_name": "tensorrt_llm",
                "inputs": direct_inputs(prompt, max_tokens=max_tokens, streaming=False),
            }

        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            result.as_numpy("output_ids")
            break

    return call
