"""The gateway's own CPU per request, without HTTP: its ASGI app driven in-process.

    .venv/bin/python -m bench.inprocess [--requests 600] [--platform [--project]]
        [--concurrency K] [--stream] [--profile [--profile-dump F]] [--stages] [--fleet]
        [--endpoints N]

Starts a dev Triton, then calls `llmgateway.asgi.application` directly with an
ASGI scope for POST /v1/chat/completions, one request at a time, and prints the
process's CPU time per request (all threads: the event loop and gRPC's) and per
thread. No client, no socket to the gateway: the number moves only with the
gateway's own code, which makes it the one to watch while optimising (the HTTP
benches' latencies on a shared 2-core VM move by more than a change is worth).

--platform: keys, quotas (Redis db 12) and request logs (PostgreSQL) on, as in
bench_platform; --project: the key's project has limits too (issue 17's "key +
project"). --stream: one 4,000-token stream per request, reported per token.
--concurrency K / --tokens L (with --stream): K streams of L tokens at once, so the
receive path sees several streams' tokens ready together, as under load. Without
--stream, --concurrency K runs K chat completions at once (CPU per request).
--profile: a cProfile of the measured requests, by internal time (--profile-sort
cumulative for the call tree's view; --profile-lines N; --profile-dump FILE keeps it
for pstats, e.g. to compare two modes function by function).
--stages: where a streamed chat completion's time to first token goes (in-process).
--fleet: the same model served by one Triton endpoint and by three (dev Tritons on
127.0.0.1-3, one port), in alternating rounds: what balancing and health bookkeeping
cost per request (issue 13's target: at most 0.05 ms more with three).
--endpoints N: the measured model served by N dev Tritons (bench.instructions
--endpoints counts the instructions of both).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from pathlib import Path

from bench.common import TOKENIZER, dev_stack, fleet_extend, setup_django, table

PROMPT_TOKENS = 4000
# A chat chunk with text in it (the role chunk's content is "").
CONTENT = re.compile(rb'"content":"[^"]')


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, keyed "name/tid"."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def receiver(body: bytes):
    """An ASGI receive for one request: its body, then a client that never leaves."""
    received = False

    async def receive():
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    return receive


async def bench(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-inprocess-"))
    if args.platform:
        from bench.bench_platform import REDIS, setup_database

        os.environ["REDIS_URL"] = REDIS
        await asyncio.to_thread(setup_database)
    else:
        os.environ["DATABASE_URL"] = ""
        await asyncio.to_thread(setup_django, platform=False, sqlite_path=workdir / "db.sqlite3")
    import orjson

    from llmgateway.asgi import application

    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    async with (
        dev_stack(
            workdir, max_output_tokens=args.tokens + 100, context_length=args.tokens + 1000
        ) as triton,
        fleet_extend(triton, args.endpoints, workdir),
    ):
        if args.platform:
            from bench.bench_platform import bench_key

            secret = await asyncio.to_thread(bench_key, project=args.project)
            headers.append((b"authorization", f"Bearer {secret}".encode()))
        if args.stream:
            content, max_tokens = f"[[long:{args.tokens}]]", args.tokens
        else:
            content, max_tokens = "who are you?", 16
        body = orjson.dumps(
            {
                "model": "bench",
                "max_tokens": max_tokens,
                "stream": args.stream,
                "messages": [{"role": "user", "content": content}],
            }
        )
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }

        async def one() -> None:
            if args.concurrency > 1:
                await asyncio.gather(*(single() for _ in range(args.concurrency)))
            else:
                await single()

        async def single() -> None:
            receive = receiver(body)
            status = []

            async def send(message) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            await application(dict(scope), receive, send)
            assert status == [200], status

        if args.stages:
            await stages(application, scope, body.replace(b'"stream":false', b'"stream":true'))
            return

        requests = max(args.requests // (200 if args.stream else 1), 2)
        for _ in range(2 if args.stream else 50):
            await one()
        before, started = thread_cpu(), time.process_time()
        for _ in range(requests):
            await one()
        spent, after = time.process_time() - started, thread_cpu()
        per_stream = args.tokens * args.concurrency
        unit, per = (
            ("token", requests * per_stream)
            if args.stream
            else ("request", requests * args.concurrency)
        )
        rows = [["thread", f"ms CPU per {unit}"]]
        for name, seconds in sorted(after.items(), key=lambda item: -item[1]):
            used = seconds - before.get(name, 0.0)
            if used > 0:
                rows.append([name, f"{used / per * 1000:.4f}"])
        rows.append(["all (process_time)", f"{spent / per * 1000:.4f}"])
        print(
            f"{requests} {'streams' if args.stream else 'chat completions'}, platform "
            f"{'on' if args.platform else 'off'}"
        )
        print(table(rows))
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.enable()
            for _ in range(requests):
                await one()
            profile.disable()
            if args.profile_dump:
                profile.dump_stats(args.profile_dump)
            pstats.Stats(profile).sort_stats(args.profile_sort).print_stats(args.profile_lines)


FLEET_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
FLEET_ROUNDS = 10


async def fleet(args) -> None:
    """CPU per non-streamed chat completion with one endpoint vs three (--fleet)."""
    import orjson

    from llmgateway.devtriton.server import DevTriton, free_port

    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    os.environ["DATABASE_URL"] = ""
    await asyncio.to_thread(setup_django, platform=False, sqlite_path=workdir / "db.sqlite3")
    from llmgateway.asgi import application
    from llmgateway.services import model_upsert

    ports = [free_port(FLEET_HOSTS) for _ in range(3)]
    servers = [
        DevTriton(
            host=host,
            grpc_port=ports[0],
            http_port=ports[1],
            metrics_port=ports[2],
            state_dir=workdir / f"triton-{host}",
        )
        for host in FLEET_HOSTS
    ]
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        addresses = {"one endpoint": servers[0].grpc_url}
        addresses["three endpoints"] = ",".join(s.grpc_url for s in servers)
        for name, triton_url in addresses.items():
            await asyncio.to_thread(
                model_upsert,
                name=name,
                triton_url=triton_url,
                triton_model="tensorrt_llm",
                tokenizer_path=TOKENIZER,
            )
        calls = {}
        for name in addresses:
            body = orjson.dumps(
                {
                    "model": name,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": "who are you?"}],
                }
            )
            calls[name] = _caller(application, body)
        for call in calls.values():  # warm: engines, templates, channels
            for _ in range(50):
                await call()
        spent = dict.fromkeys(calls, 0.0)
        per_round = max(args.requests // FLEET_ROUNDS, 1)
        for _ in range(FLEET_ROUNDS):
            for name, call in calls.items():
                started = time.process_time()
                for _ in range(per_round):
                    await call()
                spent[name] += time.process_time() - started
        total = per_round * FLEET_ROUNDS
        rows = [["path", "ms CPU per request"]]
        rows += [[name, f"{seconds / total * 1000:.4f}"] for name, seconds in spent.items()]
        added = (spent["three endpoints"] - spent["one endpoint"]) / total * 1000
        rows.append(["three minus one", f"{added:+.4f}"])
        print(f"{total} chat completions per path, platform off, {FLEET_ROUNDS} alternating rounds")
        print(table(rows))
    finally:
        for server in servers:
            server.stop()


def _caller(application, body: bytes):
    """One POST /v1/chat/completions of `body` to the ASGI app, checked for a 200."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }

    async def call() -> None:
        status = []

        async def send(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await application(dict(scope), receiver(body), send)
        assert status == [200], status

    return call


async def stages(application, scope: dict, body: bytes, runs: int = 300) -> None:
    """Where a streamed request's time to first token goes, stage by stage (--stages).

    Timestamps from wrappers around gateway functions: when the view starts (its
    body parsed and validated: chat_validate), when the prompt's ids are ready
    (the runner's prepare returns), when the Triton call is created (TritonStream.open),
    when grpc.aio has been given the request to send (the runner's start returns),
    when the first response is parsed (parse_response), and when the first
    content chunk is handed to the server (the ASGI send). p50 and p90 of each
    span; the spans' p50s need not add up to the total's.
    """
    import statistics

    from llmgateway.api import chat
    from llmgateway.runner import lifecycle
    from llmgateway.triton import stream as triton_stream

    marks: dict[str, float] = {}
    # (owner, function name) -> (mark, taken on return rather than on entry)
    marked = {
        (chat, "chat_validate"): ("view", False),
        (lifecycle.Run, "prepare"): ("prepared", True),
        (triton_stream.TritonStream, "open"): ("call", True),
        (lifecycle.Run, "start"): ("sent", True),
        (triton_stream, "parse_response"): ("message", False),
    }
    saved = {target: getattr(*target) for target in marked}

    def marking(function, name: str, at_exit: bool):
        if asyncio.iscoroutinefunction(function):

            async def wrapper(*args, **kwargs):
                result = await function(*args, **kwargs)
                marks.setdefault(name, time.perf_counter())
                return result
        elif at_exit:

            def wrapper(*args, **kwargs):
                result = function(*args, **kwargs)
                marks.setdefault(name, time.perf_counter())
                return result
        else:

            def wrapper(*args, **kwargs):
                marks.setdefault(name, time.perf_counter())
                return function(*args, **kwargs)

        return wrapper

    for (owner, attribute), (name, at_exit) in marked.items():
        setattr(owner, attribute, marking(saved[owner, attribute], name, at_exit))
    spans = [
        ("request → view (body parsed, validated)", "start", "view"),
        ("view → prompt ids ready (render, tokenize)", "view", "prepared"),
        ("prompt ready → Triton call created", "prepared", "call"),
        ("call created → request handed to gRPC", "call", "sent"),
        ("call created → first response parsed (Triton)", "call", "message"),
        ("first response → first content chunk sent", "message", "content"),
        ("request → first content chunk (gateway TTFT)", "start", "content"),
    ]
    try:
        samples: dict[str, list[float]] = {}
        for run in range(runs + 20):
            marks.clear()

            async def send(message) -> None:
                if CONTENT.search(message.get("body", b"")):
                    marks.setdefault("content", time.perf_counter())

            marks["start"] = time.perf_counter()
            await application(dict(scope), receiver(body), send)
            if run < 20:
                continue
            for name, begin, end in spans:
                samples.setdefault(name, []).append((marks[end] - marks[begin]) * 1000)
        rows = [["stage", "p50 ms", "p90 ms"]]
        for name, values in samples.items():
            values.sort()
            rows.append(
                [name, f"{statistics.median(values):.3f}", f"{values[len(values) * 9 // 10]:.3f}"]
            )
        print(f"{runs} streamed chat completions, stages of the time to first token")
        print(table(rows))
    finally:
        for (owner, attribute), function in saved.items():
            setattr(owner, attribute, function)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--platform", action="store_true")
    parser.add_argument(
        "--project", action="store_true", help="with --platform: key and project limits"
    )
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--tokens", type=int, default=PROMPT_TOKENS, help="per stream")
    parser.add_argument("--concurrency", type=int, default=1, help="streams at once")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-sort", default="tottime", help="e.g. cumulative")
    parser.add_argument("--profile-lines", type=int, default=40)
    parser.add_argument("--profile-dump", help="also write the profile's stats to this file")
    parser.add_argument(
        "--stages", action="store_true", help="stages of a streamed request's time to first token"
    )
    parser.add_argument(
        "--fleet", action="store_true", help="one Triton endpoint vs three (platform off)"
    )
    parser.add_argument(
        "--endpoints",
        type=int,
        default=1,
        help="serve the model from this many dev Tritons (127.0.0.1, .2, ...; one port)",
    )
    args = parser.parse_args()
    os.environ["GATEWAY_PLATFORM"] = "true" if args.platform and not args.fleet else "false"
    import uvloop

    uvloop.run(fleet(args) if args.fleet else bench(args))


if __name__ == "__main__":
    main()
