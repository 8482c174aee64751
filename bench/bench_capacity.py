"""Streaming capacity: N concurrent streams through the gateway vs a direct Triton consumer.

    .venv/bin/python -m bench.bench_capacity [--streams 16,64,256,1024] [--tokens 400]
        [--prompts 1000,8000,32000 | --no-ttft] [--ttft-load 64] [--prompt-tokens 0]

In one run, against one dev Triton: a direct tritonclient asyncio consumer of the
streams (stream_infer, as_numpy on output_ids), and two gateway workers, platform off
and platform on (a key with every limit set and none binding, Redis quotas, request
logs), each fed the same N concurrent streamed chat completions of --tokens tokens.
Per N and path it prints:
- tokens/s delivered (the gateway's from each stream's usage chunk) and the ratio to
  the direct consumer's;
- the gateway's CPU per token (utime + stime of its worker from /proc, before/after),
  and the direct consumer's own CPU per token (this process) as the baseline;
- p50 / p99 gap between a stream's events as the client receives them;
- RSS per open stream: the worker's peak RSS while the N streams run, minus its RSS
  idle (after warm-up), over N;
- how each grows with N (the value at N over the value at the smallest N);
- whether the load generator (this process) was the limiter: its CPU near one core.
Then time to first token for prompts of --prompts tokens, each sent while --ttft-load
streams run on the same path (direct, platform off, platform on). --prompt-tokens P
gives every one of the N streams a prompt of about P tokens, for RSS per open stream
with long prompts (what the gateway holds per stream grows with its prompt).

The HTTP client is lean: one raw asyncio connection per stream parsed with httptools
(uvicorn's parser); it keeps only each stream's arrival times and its last bytes (the
usage chunk), never parsing the events in between.

Platform on needs PostgreSQL and Redis: BENCH_DATABASE_URL (dropped and recreated;
default postgres://postgres@127.0.0.1:5432/llmgateway_bench) and BENCH_REDIS_URL
(flushed; default redis://127.0.0.1:6379/12).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_platform import DATABASE, REDIS, setup_database
from bench.common import (
    TOKENIZER,
    cpu_seconds,
    dev_stack,
    direct_inputs,
    rss_mb,
    start_gateway,
    table,
)

CHAT = "/v1/chat/completions"
LIMITER_SHARE = 0.85  # the load generator's CPU share of one core at which it limits


def capacity_key() -> str:
    """A key with every limit set (so every check runs) and none binding at 1024+ streams."""
    from accounts.services import key_create, owner_get_or_create

    _, secret = key_create(
        owner=owner_get_or_create(username="bench"),
        name="bench capacity",
        rpm_limit=10_000_000,
        tpm_limit=10_000_000_000,
        max_concurrency=100_000,
        budget_tokens=10**15,
        budget_period="total",
    )
    return secret


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


@dataclass
class StreamStats:
    """What one stream's client records: arrival times, tokens, first-token time."""

    sent: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent

    def gaps(self) -> list[float]:
        a = self.arrivals
        return [y - x for x, y in zip(a, a[1:], strict=False)]


class RawStream(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection posting streamed chat completions.

    Each body piece is timestamped; only the last bytes are kept, for the usage chunk
    (completion_tokens) at the stream's end.
    """

    @classmethod
    async def connect(cls, host: str, port: int) -> RawStream:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        protocol.host = f"{host}:{port}"
        return protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_status(self, status: bytes) -> None:
        if self.parser.get_status_code() != 200:
            self.failed = status

    def on_body(self, body: bytes) -> None:
        self.stats.arrivals.append(time.perf_counter())
        self.tail = (self.tail + body)[-600:]

    def on_message_complete(self) -> None:
        import orjson

        marker = self.tail.rfind(b'"usage":{')
        if marker >= 0 and self.failed is None:
            end = self.tail.index(b"}", marker)
            self.stats.tokens = orjson.loads(self.tail[marker + 8 : end + 1])["completion_tokens"]
        self.done.set_result(None)

    def connection_lost(self, exc) -> None:
        if hasattr(self, "done") and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def stream(self, body: bytes, auth: str | None) -> StreamStats:
        import httptools

        head = f"POST {CHAT} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        if auth:
            head += f"Authorization: Bearer {auth}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.parser = httptools.HttpResponseParser(self)
        self.stats, self.tail, self.failed = StreamStats(), b"", None
        self.done = asyncio.get_running_loop().create_future()
        self.stats.sent = time.perf_counter()
        self.transport.write(head.encode() + body)
        await self.done
        if self.failed is not None:
            raise RuntimeError(f"gateway answered {self.failed!r}: {self.tail[-300:]!r}")
        return self.stats


def chat_body(content: str, max_tokens: int) -> bytes:
    import orjson

    return orjson.dumps(
        {
            "model": "bench",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
    )


class Direct:
    """The direct consumer: tritonclient's asyncio stream_infer, one call per stream."""

    def __init__(self, grpc_url: str) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.client = grpcclient.InferenceServerClient(grpc_url)

    def inputs(self, content: str, max_tokens: int) -> list:
        return direct_inputs(content, max_tokens=max_tokens, streaming=True)

    async def stream(self, inputs: list) -> StreamStats:
        async def requests():
            yield {"model_name": "tensorrt_llm", "inputs": inputs}

        stats = StreamStats(sent=time.perf_counter())
        async for result, error in self.client.stream_infer(requests()):
            if error is not None:
                raise RuntimeError(f"direct stream failed: {error}")
            stats.arrivals.append(time.perf_counter())
            ids = result.as_numpy("output_ids")
            if ids is not None:
                stats.tokens += int(ids.size)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        return stats


@dataclass
class Level:
    """One path's figures at one N."""

    tokens_per_s: float
    cpu_ms_per_token: float | None  # the gateway worker's (None for direct)
    client_ms_per_token: float  # this process's CPU per token
    client_share: float  # this process's CPU, in cores
    machine_share: float  # the machine's CPU busy, 0..1
    gap_p50_ms: float
    gap_p99_ms: float
    rss_kib_per_stream: float | None
    ttft_p50_ms: float  # of the N streams started together


class Path_:
    """A way to run one stream: direct, or through one gateway worker."""

    def __init__(
        self,
        name: str,
        *,
        direct: Direct | None = None,
        port: int = 0,
        pid: int = 0,
        auth: str | None = None,
    ) -> None:
        self.name, self.direct, self.port, self.pid, self.auth = name, direct, port, pid, auth
        self.idle_rss_mb = 0.0

    async def connections(self, count: int) -> list[RawStream | None]:
        if self.direct is not None:
            return [None] * count
        return list(
            await asyncio.gather(*(RawStream.connect("127.0.0.1", self.port) for _ in range(count)))
        )

    def call(self, conn: RawStream | None, content: str, max_tokens: int):
        if self.direct is not None:
            return self.direct.stream(self.direct.inputs(content, max_tokens))
        return conn.stream(chat_body(content, max_tokens), self.auth)


async def run_level(path: Path_, streams: int, tokens: int, prompt: str = "") -> Level:
    """`streams` concurrent streams of `tokens` tokens each, their chat content `prompt`
    (filler text, see --prompt-tokens) and the dev model's directive."""
    conns = await path.connections(streams)
    content = f"{prompt}[[long:{tokens}]]"
    peak = [0.0]
    sampling = True

    async def sample_rss() -> None:
        while sampling:
            peak[0] = max(peak[0], rss_mb(path.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample_rss()) if path.pid else None
    busy0, total0 = machine_busy()
    client0 = time.process_time()
    gateway0 = cpu_seconds(path.pid) if path.pid else 0.0
    started = time.perf_counter()
    results = await asyncio.gather(*(path.call(c, content, tokens) for c in conns))
    elapsed = time.perf_counter() - started
    gateway_cpu = (cpu_seconds(path.pid) - gateway0) if path.pid else None
    client_cpu = time.process_time() - client0
    busy1, total1 = machine_busy()
    sampling = False
    if sampler is not None:
        await sampler
    for conn in conns:
        if conn is not None:
            conn.transport.close()
    delivered = sum(r.tokens for r in results)
    gaps = sorted(g for r in results for g in r.gaps())
    return Level(
        tokens_per_s=delivered / elapsed,
        cpu_ms_per_token=gateway_cpu / delivered * 1000 if gateway_cpu is not None else None,
        client_ms_per_token=client_cpu / delivered * 1000,
        client_share=client_cpu / elapsed,
        machine_share=(busy1 - busy0) / max(1, total1 - total0),
        gap_p50_ms=statistics.median(gaps) * 1000 if gaps else 0.0,
        gap_p99_ms=gaps[int(len(gaps) * 0.99) - 1] * 1000 if gaps else 0.0,
        rss_kib_per_stream=(peak[0] - path.idle_rss_mb) * 1024 / streams if path.pid else None,
        ttft_p50_ms=statistics.median(r.ttft for r in results) * 1000,
    )


def filler(tokens: int, answer: int = 4) -> str:
    """Chat content of about `tokens` tokens (the dev tokenizer), then `answer` tokens to
    answer (no directive when `answer` is 0)."""
    from llmgateway.textgen.tokenizer import load_text_model

    text = load_text_model(TOKENIZER)
    words = "the quick brown fox jumps over a lazy dog while seven wise owls watch "
    per_copy = len(text.encode(words))
    body = words * max(1, tokens // per_copy)
    return body + (f"[[long:{answer}]]" if answer else "")


async def ttft_under_load(path: Path_, load: int, tokens: int, prompt: str, probes: int) -> float:
    """p50 time to first token of `probes` requests with `prompt`, one after the other,
    while `load` streams of `tokens` run on the same path (restarted as they end)."""
    conns = await path.connections(load + 1)
    probe_conn, background = conns[0], conns[1:]
    running = True

    async def loop_stream(conn) -> None:
        while running:
            await path.call(conn, f"[[long:{tokens}]]", tokens)

    tasks = [asyncio.create_task(loop_stream(c)) for c in background]
    await asyncio.sleep(0.5)  # let the load reach its steady state
    firsts = []
    for _ in range(probes):
        stats = await path.call(probe_conn, prompt, 4)
        firsts.append(stats.ttft)
    running = False
    await asyncio.gather(*tasks)
    for conn in conns:
        if conn is not None:
            conn.transport.close()
    return statistics.median(firsts) * 1000


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(levels: dict[int, dict[str, Level]], names: list[str]) -> None:
    ns = sorted(levels)
    # Growth is read from 16 streams up: below that a level's CPU time is a few of the
    # kernel's 10 ms ticks, and its per-request costs are not spread over many tokens.
    first = next((n for n in ns if n >= 16), ns[0])
    rows = [
        [
            "N",
            "path",
            "tokens/s",
            "vs direct",
            "gw CPU ms/tok",
            "growth",
            "client ms/tok",
            "TTFT p50 ms",
            "gap p50 ms",
            "gap p99 ms",
            "RSS KiB/stream",
            "limiter",
        ]
    ]
    for n in ns:
        direct = levels[n].get("direct")
        for name in names:
            lv = levels[n][name]
            base = levels[first][name]
            growth = (
                f"{lv.cpu_ms_per_token / base.cpu_ms_per_token:.2f}x"
                if lv.cpu_ms_per_token and base.cpu_ms_per_token
                else "-"
            )
            limiter = []
            if lv.client_share >= LIMITER_SHARE:
                limiter.append(f"load generator ({lv.client_share:.2f} core)")
            if lv.machine_share >= 0.95:
                limiter.append("machine busy")
            rows.append(
                [
                    str(n),
                    name,
                    f"{lv.tokens_per_s:,.0f}",
                    f"{lv.tokens_per_s / direct.tokens_per_s:.2f}x" if direct else "-",
                    fmt(lv.cpu_ms_per_token, ".4f"),
                    growth,
                    f"{lv.client_ms_per_token:.4f}",
                    f"{lv.ttft_p50_ms:.2f}",
                    f"{lv.gap_p50_ms:.2f}",
                    f"{lv.gap_p99_ms:.1f}",
                    fmt(lv.rss_kib_per_stream, ".1f"),
                    ", ".join(limiter) or "-",
                ]
            )
    print(table(rows))
    print(
        "growth: gateway CPU per token at N over its value at the smallest N >= 16. client ms/tok: "
        "this process's CPU per token (for direct: the direct consumer's own cost).\n"
        f"limiter: this process above {LIMITER_SHARE:.2f} of a core (the load generator "
        "limits), or the machine's cores at 95% or more (the dev Triton shares them)."
    )


async def bench(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    await asyncio.to_thread(setup_database)
    import redis

    from llmgateway.devtriton.server import free_port

    redis.Redis.from_url(REDIS).flushdb()
    longest = max([*args.prompts, args.prompt_tokens])
    prompt = await asyncio.to_thread(filler, args.prompt_tokens, 0) if args.prompt_tokens else ""
    async with dev_stack(
        workdir,
        models={"tensorrt_llm": "recent"},
        max_output_tokens=args.tokens + 100,
        context_length=longest + args.tokens + 1000,
    ) as triton:
        secret = await asyncio.to_thread(capacity_key)
        env = {"DATABASE_URL": DATABASE, "SQLITE_PATH": ""}
        off_port, on_port = free_port(), free_port()
        off = start_gateway(off_port, workdir / "unused", {**env, "GATEWAY_PLATFORM": "false"})
        on = start_gateway(on_port, workdir / "unused", {**env, "REDIS_URL": REDIS})
        try:
            paths = [
                Path_("direct", direct=Direct(triton.grpc_url)),
                Path_("platform off", port=off_port, pid=off.pid),
                Path_("platform on", port=on_port, pid=on.pid, auth=secret),
            ]
            names = [p.name for p in paths]
            for path in paths:  # warm up: connections, caches, the key's lookups
                await run_level(path, 8, 20)
            await asyncio.sleep(0.5)
            for path in paths:
                if path.pid:
                    path.idle_rss_mb = rss_mb(path.pid)
            levels: dict[int, dict[str, Level]] = {}
            for n in sorted(args.streams):
                levels[n] = {}
                for path in paths:
                    levels[n][path.name] = await run_level(path, n, args.tokens, prompt)
                    await asyncio.sleep(0.2)
            print(
                f"{args.tokens}-token streams, N concurrent, one gateway worker per platform mode"
            )
            report(levels, names)
            if args.prompts:
                prompts = {p: await asyncio.to_thread(filler, p) for p in args.prompts}
                rows = [["prompt tokens", *(f"{n} TTFT p50 ms" for n in names)]]
                for size, prompt in prompts.items():
                    ttft = {}
                    for path in paths:
                        ttft[path.name] = await ttft_under_load(
                            path, args.ttft_load, args.tokens, prompt, args.probes
                        )
                    direct = ttft["direct"]
                    rows.append(
                        [
                            f"~{size}",
                            f"{direct:.1f}",
                            *(f"{ttft[n]:.1f} ({ttft[n] - direct:+.1f})" for n in names[1:]),
                        ]
                    )
                print(
                    f"\ntime to first token under load ({args.ttft_load} streams of "
                    f"{args.tokens} tokens running on the same path; added over direct)"
                )
                print(table(rows))
        finally:
            for process in (off, on):
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])

    def ints(value: str) -> list[int]:
        return [int(v) for v in value.split(",") if v]

    parser.add_argument("--streams", type=ints, default=[16, 64, 256, 1024])
    parser.add_argument("--tokens", type=int, default=400, help="tokens per stream")
    parser.add_argument("--prompts", type=ints, default=[1000, 8000, 32000])
    parser.add_argument("--no-ttft", dest="prompts", action="store_const", const=[])
    parser.add_argument("--ttft-load", type=int, default=64, help="streams running meanwhile")
    parser.add_argument("--probes", type=int, default=5, help="TTFT requests per prompt size")
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=0,
        help="each stream's prompt, in tokens of filler (0: a one-line prompt); RSS per "
        "open stream with long prompts",
    )
    args = parser.parse_args()
    os.environ.setdefault("GATEWAY_PLATFORM", "true")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
