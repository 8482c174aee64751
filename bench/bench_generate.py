"""/generate through the gateway vs a direct tritonclient call to the same model.

    .venv/bin/python bench/bench_generate.py [--requests 2000] [--max-tokens 16]

Starts dev Triton and one gateway worker (uvicorn), runs both at concurrency 1
and 16 in one run, and prints p50/p95 latency, requests per second, the ratios,
and the gateway worker's resident memory. Targets (issue 2): at most +1 ms p50
at concurrency 1; at least 0.56x the direct rate at concurrency 16.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench.common import (
    compare,
    dev_stack,
    direct_call,
    http_session,
    rss_mb,
    setup_django,
    start_gateway,
    table,
)


async def bench(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    db_path = workdir / "bench.sqlite3"
    await asyncio.to_thread(setup_django, platform=False, sqlite_path=db_path)
    import tritonclient.grpc.aio as grpcclient

    from llmgateway.devtriton.server import free_port

    async with dev_stack(workdir, models={"tensorrt_llm": args.trtllm_version}) as triton:
        port = free_port()
        gateway = start_gateway(port, db_path, {"GATEWAY_PLATFORM": "false"})
        try:
            triton_client = grpcclient.InferenceServerClient(triton.grpc_url)
            prompt = "who are you?"
            direct = direct_call(triton_client, prompt, max_tokens=args.max_tokens)

            session = http_session(base_url=f"http://127.0.0.1:{port}")
            body = {"prompt": prompt, "max_output_len": args.max_tokens}

            async def via_gateway() -> None:
                async with session.post("/generate", json=body) as response:
                    assert response.status == 200, await response.text()
                    await response.read()

            rows = [["concurrency", "path", "p50 ms", "p95 ms", "req/s"]]
            summary = []
            for concurrency in (1, 16):
                results = await compare(
                    {"direct": direct, "gateway": via_gateway},
                    concurrency=concurrency,
                    requests=args.requests,
                    cpu_pids={"gateway": gateway.pid},
                )
                for r in results.values():
                    rows.append(
                        [str(concurrency), r.name, f"{r.p50:.2f}", f"{r.p95:.2f}", f"{r.rps:.0f}"]
                    )
                d, g = results["direct"], results["gateway"]
                summary.append(
                    f"c={concurrency}: gateway adds {g.p50 - d.p50:+.2f} ms p50, "
                    f"{g.rps / d.rps:.2f}x the direct rate, "
                    f"{g.cpu_ms_per_request:.2f} ms of gateway CPU per request"
                )
            await session.close()
            print(table(rows))
            print("\n".join(summary))
            print(f"gateway worker RSS: {rss_mb(gateway.pid):.0f} MB")
        finally:
            gateway.terminate()
            gateway.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--trtllm-version", default="recent", choices=["0.8", "recent"])
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
