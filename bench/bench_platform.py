"""/v1/chat/completions with keys, quotas and request logs on, vs the same gateway with
them off, vs a direct Triton call; on PostgreSQL and Redis.

    .venv/bin/python -m bench.bench_platform [--requests 1000] [--soak 600]

One run: dev Triton, two gateway workers (platform on: key, rpm/tpm/concurrency
limits and a budget too large to bind, request logs, REDIS_URL; platform off),
concurrency 1 and 16, then --soak seconds of load on the platform gateway while
its resident memory is sampled. Targets (issue 4): everything on, at most +1.5 ms
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

import numpy as np

from bench.common import TOKENIZER, compare, rss_mb, start_gateway, table

DATABASE = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/llmgateway_bench"
)
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def setup_django() -> None:
    import psycopg

    admin_url = DATABASE.rsplit("/", 1)[0] + "/postgres"
    name = DATABASE.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = DATABASE
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


async def bench(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    await asyncio.to_thread(setup_django)
    import aiohttp
    import redis
    import tritonclient.grpc.aio as grpcclient

    from accounts.services import key_create, owner_get_or_create
    from llmgateway.devtriton.server import DevTriton, free_port
    from llmgateway.services import model_upsert
    from llmgateway.textgen.tokenizer import load_text_model

    redis.Redis.from_url(REDIS).flushdb()
    with DevTriton(
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        state_dir=workdir / "triton",
    ) as triton:
        await asyncio.to_thread(
            model_upsert,
            name="bench",
            triton_url=triton.grpc_url,
            triton_model="tensorrt_llm",
            tokenizer_path=TOKENIZER,
        )
        owner = await asyncio.to_thread(owner_get_or_create, username="bench")
        _, secret = await asyncio.to_thread(
            key_create,
            owner=owner,
            name="bench",
            rpm_limit=10_000_000,
            tpm_limit=10_000_000_000,
            max_concurrency=1000,
            budget_tokens=10**15,
            budget_period="total",
        )
        env = {"DATABASE_URL": DATABASE, "SQLITE_PATH": ""}
        on_port, off_port = free_port(), free_port()
        on = start_gateway(on_port, workdir / "unused.sqlite3", {**env, "REDIS_URL": REDIS})
        off = start_gateway(
            off_port, workdir / "unused.sqlite3", {**env, "GATEWAY_PLATFORM": "false"}
        )
        try:
            text = load_text_model(TOKENIZER)
            prompt = "who are you?"
            ids = np.array(
                [text.encode(text.render_chat([{"role": "user", "content": prompt}]))],
                dtype=np.int32,
            )
            triton_client = grpcclient.InferenceServerClient(triton.grpc_url)

            def inputs():
                tensors = []
                for name, value in [
                    ("input_ids", ids),
                    ("input_lengths", np.array([[ids.shape[1]]], dtype=np.int32)),
                    ("request_output_len", np.array([[args.max_tokens]], dtype=np.int32)),
                    ("end_id", np.array([[text.end_id]], dtype=np.int32)),
                    ("pad_id", np.array([[text.pad_id]], dtype=np.int32)),
                    ("streaming", np.array([[False]], dtype=bool)),
                ]:
                    dtype = "BOOL" if value.dtype == bool else "INT32"
                    tensor = grpcclient.InferInput(name, value.shape, dtype)
                    tensor.set_data_from_numpy(value)
                    tensors.append(tensor)
                return tensors

            async def direct() -> None:
                async def requests():
                    yield {"model_name": "tensorrt_llm", "inputs": inputs()}

                async for result, error in triton_client.stream_infer(requests()):
                    assert error is None, error
                    result.as_numpy("output_ids")
                    break

            body = {
                "model": "bench",
                "max_tokens": args.max_tokens,
                "messages": [{"role": "user", "content": prompt}],
            }
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
            headers = {"authorization": f"Bearer {secret}"}

            def via(port: int):
                async def call() -> None:
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    async with session.post(url, json=body, headers=headers) as response:
                        assert response.status == 200, await response.text()
                        await response.read()

                return call

            paths = {"direct": direct, "platform off": via(off_port), "platform on": via(on_port)}
            rows = [["concurrency", "path", "p50 ms", "p95 ms", "req/s"]]
            summary = []
            for concurrency in (1, 16):
                results = await compare(
                    paths,
                    concurrency=concurrency,
                    requests=args.requests,
                    cpu_pids={"platform off": off.pid, "platform on": on.pid},
                )
                for r in results.values():
                    rows.append(
                        [str(concurrency), r.name, f"{r.p50:.2f}", f"{r.p95:.2f}", f"{r.rps:.0f}"]
                    )
                d = results["direct"]
                for name in ("platform off", "platform on"):
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
            for process in (on, off):
                process.terminate()
                process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--soak", type=float, default=600)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
