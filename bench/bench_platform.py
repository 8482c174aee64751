"""/v1/chat/completions with keys, quotas and request logs on, vs the same gateway with
them off, vs a direct Triton call; on PostgreSQL and Redis.

    .venv/bin/python -m bench.bench_platform [--requests 1000] [--soak 600] [--previous REF]
        [--early-start-off] [--redis-delay-ms 0.5] [--store database]

One run: dev Triton, two gateway workers (platform on: key, rpm/tpm/concurrency
limits and a budget too large to bind, request logs, REDIS_URL; platform off),
concurrency 1 and 16, then --soak seconds of load on the platform gateway while
its resident memory is sampled. With --previous REF, two more workers serve the
same requests (platform on, and off) from git revision REF, checked out in a
temporary worktree: this version against that one, measured in the same rounds. With
--early-start-off, another worker runs with QUOTA_EARLY_START=false; with
--redis-delay-ms, the gateways reach Redis through bench.delay_proxy, which adds
that delay each way (a Redis across the network); with --store database the quota
counters live in PostgreSQL (REDIS_URL unset). "on, key + project" is the same platform
gateway with a key whose project has limits too (key and project admitted together).
Targets (issue 4): everything on, at most +1.5 ms
p50 over the direct call at concurrency 1, at least 0.5x its rate at 16, and no
memory growth over a 10-minute run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.common import (
    checkout,
    checkout_remove,
    compare,
    dev_stack,
    direct_call,
    http_session,
    rss_mb,
    start_gateway,
    table,
)
from bench.common import setup_django as common_setup
from bench.delay_proxy import delay_proxy_start

DATABASE = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/llmgateway_bench"
)
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def setup_database() -> None:
    import psycopg

    admin_url = DATABASE.rsplit("/", 1)[0] + "/postgres"
    name = DATABASE.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = DATABASE
    common_setup(platform=True)


LIMITS = {
    "rpm_limit": 10_000_000,
    "tpm_limit": 10_000_000_000,
    "max_concurrency": 1000,
    "budget_tokens": 10**15,
    "budget_period": "total",
}


def bench_key(*, project: bool = False) -> str:
    """A key with every limit set (so every check runs) and none binding; its secret.

    `project`: the key is in a project of its own with the same limits, so admission
    checks key and project together (issue 17's "key + project" path); otherwise it is
    in the default project, which has none (key-only admission).
    """
    from accounts.models import Project
    from accounts.services import key_create, owner_get_or_create

    home = Project.objects.create(name="bench", **LIMITS) if project else None
    _, secret = key_create(
        owner=owner_get_or_create(username="bench"), name="bench", project=home, **LIMITS
    )
    return secret


async def bench(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    await asyncio.to_thread(setup_database)
    import redis
    import tritonclient.grpc.aio as grpcclient

    from llmgateway.devtriton.server import free_port

    redis.Redis.from_url(REDIS).flushdb()
    async with dev_stack(workdir) as triton:
        secret = await asyncio.to_thread(bench_key)
        project_secret = await asyncio.to_thread(bench_key, project=True)
        env = {"DATABASE_URL": DATABASE, "SQLITE_PATH": ""}
        # --store database: quota counters in PostgreSQL (REDIS_URL unset) instead.
        redis_url = REDIS if args.store == "redis" else ""
        proxy = None
        if args.redis_delay_ms and redis_url:
            proxy_port = free_port()
            target = REDIS.split("://", 1)[1].split("/", 1)[0]
            proxy = delay_proxy_start(proxy_port, target, args.redis_delay_ms)
            redis_url = f"redis://127.0.0.1:{proxy_port}/{REDIS.rsplit('/', 1)[1]}"
            await asyncio.sleep(1)
        on_port, off_port = free_port(), free_port()
        on = start_gateway(on_port, workdir / "unused.sqlite3", {**env, "REDIS_URL": redis_url})
        off = start_gateway(
            off_port, workdir / "unused.sqlite3", {**env, "GATEWAY_PLATFORM": "false"}
        )
        gateways = [on, off]
        if args.early_start_off:
            late_port = free_port()
            late = start_gateway(
                late_port,
                workdir / "unused.sqlite3",
                {**env, "REDIS_URL": redis_url, "QUOTA_EARLY_START": "false"},
            )
            gateways.append(late)
        previous_tree = checkout(args.previous) if args.previous else None
        if previous_tree is not None:
            previous_port = free_port()
            previous = start_gateway(
                previous_port,
                workdir / "unused.sqlite3",
                {**env, "REDIS_URL": redis_url},
                root=previous_tree,
            )
            previous_off_port = free_port()
            previous_off = start_gateway(
                previous_off_port,
                workdir / "unused.sqlite3",
                {**env, "GATEWAY_PLATFORM": "false"},
                root=previous_tree,
            )
            gateways += [previous, previous_off]
        try:
            prompt = "who are you?"
            triton_client = grpcclient.InferenceServerClient(triton.grpc_url)
            direct = direct_call(triton_client, prompt, max_tokens=args.max_tokens)

            body = {
                "model": "bench",
                "max_tokens": args.max_tokens,
                "messages": [{"role": "user", "content": prompt}],
            }
            session = http_session()
            headers = {"authorization": f"Bearer {secret}"}

            def via(port: int, key: str | None = None):
                sent = {"authorization": f"Bearer {key}"} if key else headers

                async def call() -> None:
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    async with session.post(url, json=body, headers=sent) as response:
                        assert response.status == 200, await response.text()
                        await response.read()

                return call

            paths = {
                "direct": direct,
                "platform off": via(off_port),
                "platform on": via(on_port),
                "on, key + project": via(on_port, project_secret),
            }
            cpu_pids = {"platform off": off.pid, "platform on": on.pid}
            cpu_pids["on, key + project"] = on.pid
            if args.early_start_off:
                paths["on, early start off"] = via(late_port)
                cpu_pids["on, early start off"] = late.pid
            if previous_tree is not None:
                paths[f"on, {args.previous}"] = via(previous_port)
                cpu_pids[f"on, {args.previous}"] = previous.pid
                paths[f"off, {args.previous}"] = via(previous_off_port)
                cpu_pids[f"off, {args.previous}"] = previous_off.pid
            rows = [["concurrency", "path", "p50 ms", "p95 ms", "req/s"]]
            summary = []
            for concurrency in (1, 16):
                results = await compare(
                    paths,
                    concurrency=concurrency,
                    requests=args.requests,
                    cpu_pids=cpu_pids,
                )
                for r in results.values():
                    rows.append(
                        [str(concurrency), r.name, f"{r.p50:.2f}", f"{r.p95:.2f}", f"{r.rps:.0f}"]
                    )
                d = results["direct"]
                for name in [p for p in paths if p != "direct"]:
                    g = results[name]
                    summary.append(
                        f"c={concurrency} {name}: {g.p50 - d.p50:+.2f} ms p50 over direct, "
                        f"{g.rps / d.rps:.2f}x its rate, "
                        f"{g.cpu_ms_per_request:.2f} ms gateway CPU per request"
                    )
            print(table(rows))
            print("\n".join(summary))

            if args.soak:
                samples = []
                call = via(on_port)
                end = time.monotonic() + args.soak
                next_sample = time.monotonic()
                sent = 0
                while time.monotonic() < end:
                    await asyncio.gather(*(call() for _ in range(16)))
                    sent += 16
                    if time.monotonic() >= next_sample:
                        samples.append((sent, rss_mb(on.pid)))
                        next_sample += args.soak / 10
                samples.append((sent, rss_mb(on.pid)))
                print(f"soak: {sent} requests in {args.soak:.0f} s; platform gateway RSS (MB):")
                print("  " + "  ".join(f"{n}:{mb:.0f}" for n, mb in samples))
            await session.close()
        finally:
            for process in gateways:
                process.terminate()
                process.wait(10)
            if previous_tree is not None:
                checkout_remove(previous_tree)
            if proxy is not None:
                proxy.terminate()
                proxy.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--soak", type=float, default=600)
    parser.add_argument("--previous", help="git revision to compare with (platform on and off)")
    parser.add_argument(
        "--early-start-off",
        action="store_true",
        help="also serve platform-on requests with QUOTA_EARLY_START=false",
    )
    parser.add_argument(
        "--store",
        choices=["redis", "database"],
        default="redis",
        help="where the platform gateways keep quota counters",
    )
    parser.add_argument(
        "--redis-delay-ms",
        type=float,
        default=0.0,
        help="reach Redis through a proxy adding this delay each way (a remote Redis)",
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
