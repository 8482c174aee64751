"""Streaming through /v1/chat/completions vs a direct Triton stream.

    .venv/bin/python -m bench.bench_stream [--runs 30] [--long 4000]

In one run, with dev Triton and one gateway worker (keys and quotas off, so this
measures the streaming path itself):
- time to first token, p50 over --runs short streams, gateway vs a direct
  tritonclient stream of the same request;
- gateway CPU per token (utime+stime of the worker from /proc), measured over
  windows of a --long-token stream: the cost must not grow with the output;
- as the baseline for that, the CPU per token a direct tritonclient stream of the
  same --long tokens costs its own (client) process, and per window what the
  gateway adds to it: its CPU per token minus the direct client's.
Targets (issue 3): streaming adds at most 1 ms to the time to first token and at
most 0.1 ms of CPU per token over a direct Triton stream, the same at token 4,000
as at token 10. (The gateway's own total is printed too: it includes receiving
every token over gRPC, which the direct client pays as well.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import (
    cpu_seconds,
    dev_stack,
    direct_inputs,
    setup_django,
    start_gateway,
    table,
)


async def bench(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    db_path = workdir / "bench.sqlite3"
    await asyncio.to_thread(setup_django, platform=False, sqlite_path=db_path)
    import aiohttp
    import orjson
    import tritonclient.grpc.aio as grpcclient

    from llmgateway.devtriton.server import free_port

    async with dev_stack(
        workdir,
        models={"tensorrt_llm": "recent"},
        max_output_tokens=args.long + 100,
        context_length=args.long + 1000,
    ) as triton:
        port = free_port()
        gateway = start_gateway(port, db_path, {"GATEWAY_PLATFORM": "false"})
        try:
            client = grpcclient.InferenceServerClient(triton.grpc_url)
            session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")

            async def direct_ttft(prompt: str, max_tokens: int) -> float:
                async def requests():
                    yield {
                        "model_name": "tensorrt_llm",
                        "inputs": direct_inputs(prompt, max_tokens=max_tokens, streaming=True),
                    }

                start = time.perf_counter()
                first = None
                async for result, error in client.stream_infer(requests()):
                    assert error is None
                    if first is None:
                        first = time.perf_counter() - start
                    if result.get_response().parameters["triton_final_response"].bool_param:
                        break
                return first

            async def gateway_stream(prompt: str, max_tokens: int, on_token=None) -> float:
                body = {
                    "model": "bench",
                    "stream": True,
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": prompt}],
                }
                start = time.perf_counter()
                first = None
                tokens = 0
                async with session.post("/v1/chat/completions", json=body) as response:
                    assert response.status == 200, await response.text()
                    async for line in response.content:
                        if not line.startswith(b"data: {"):
                            continue
                        chunk = orjson.loads(line[6:])
                        delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
                        if delta.get("content"):
                            tokens += 1
                            if first is None:
                                first = time.perf_counter() - start
                            if on_token:
                                on_token(tokens)
                return first

            prompt = "who are you?"
            for _ in range(5):
                await direct_ttft(prompt, 8)
                await gateway_stream(prompt, 8)
            # Alternate, so a noisy neighbour hits both paths alike.
            direct, via = [], []
            for _ in range(args.runs):
                direct.append(await direct_ttft(prompt, 8))
                via.append(await gateway_stream(prompt, 8))
            d50, g50 = statistics.median(direct) * 1000, statistics.median(via) * 1000

            # CPU per token over windows of one long stream ([[long:N]] = N tokens).
            marks = [10, *(m for m in (500, 1000, 2000, 3000) if m < args.long), args.long]
            samples: dict[int, list[float]] = {m: [] for m in marks}
            long_prompt = f"[[long:{args.long}]]"
            for _ in range(args.long_runs):
                seen: dict[int, float] = {}

                def on_token(n: int, seen=seen) -> None:
                    if n in samples:
                        seen[n] = cpu_seconds(gateway.pid)

                await gateway_stream(long_prompt, args.long, on_token)
                for m in marks:
                    samples[m].append(seen.get(m, float("nan")))
            # The baseline: a direct tritonclient stream's own CPU per token (this process
            # runs nothing else meanwhile), over the same --long tokens.
            direct_per_token = []
            for _ in range(args.long_runs):
                before = time.process_time()
                await direct_ttft(long_prompt, args.long)
                direct_per_token.append((time.process_time() - before) / args.long)
            direct_ms = statistics.mean(direct_per_token) * 1000

            rows = [["window (tokens)", "gateway CPU ms/token", "added over direct ms/token"]]
            for a, b in zip(marks, marks[1:], strict=False):
                per = statistics.mean(
                    (y - x) / (b - a) for x, y in zip(samples[a], samples[b], strict=True)
                )
                rows.append([f"{a}-{b}", f"{per * 1000:.4f}", f"{per * 1000 - direct_ms:+.4f}"])
            await session.close()
            print(
                f"time to first token p50: direct {d50:.2f} ms, gateway {g50:.2f} ms ({g50 - d50:+.2f} ms)"
            )
            print(table(rows))
            print(f"direct tritonclient stream: {direct_ms:.4f} ms CPU per token (client process)")
        finally:
            gateway.terminate()
            gateway.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument("--long-runs", type=int, default=3)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
