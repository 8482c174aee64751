"""The Responses API against chat, and a deep conversation's rebuild.

    .venv/bin/python -m bench.bench_responses [--runs 30] [--turns 50] [--reads 200]

In one run, with dev Triton and one gateway worker (keys and quotas off, responses
stored: REQUEST_LOG_CONTENT on):
- time to first token, p50 over --runs streams each, of POST /v1/responses (first
  `response.output_text.delta`) and of the same request to /v1/chat/completions (first
  content chunk), alternating, so machine drift cannot favour either;
- a conversation --turns deep through previous_response_id, then the time to rebuild
  it (the stored row read and its items joined, as a next turn does), p50 over --reads.
Targets (issue 18): responses within +0.2 ms of chat's time to first token; the
50-turn rebuild within 5 ms p50 on PostgreSQL (set BENCH_DATABASE_URL and DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import dev_stack, setup_django, start_gateway, table

MODEL = "bench"
PROMPT = "[[say:Hello there, general reader.]]"


async def first_token(session: aiohttp.ClientSession, url: str, body: dict, marker: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if marker in line:
                elapsed = time.perf_counter() - started
                await response.read()
                return elapsed
    raise RuntimeError(f"no {marker!r} in the stream of {url}")


async def ttft(base: str, runs: int) -> tuple[float, float]:
    chat_body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    responses_body = {"model": MODEL, "input": PROMPT, "stream": True, "store": False}
    chat, responses = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # warm both paths
            await first_token(session, base + "/v1/chat/completions", chat_body, b'"content":"H')
            await first_token(session, base + "/v1/responses", responses_body, b"output_text.delta")
        for _ in range(runs):
            chat.append(
                await first_token(
                    session, base + "/v1/chat/completions", chat_body, b'"content":"H'
                )
            )
            responses.append(
                await first_token(
                    session, base + "/v1/responses", responses_body, b"output_text.delta"
                )
            )
    return statistics.median(chat), statistics.median(responses)


async def chain(base: str, turns: int) -> str:
    previous = None
    async with aiohttp.ClientSession() as session:
        for turn in range(turns):
            body = {"model": MODEL, "input": f"[[say:turn {turn}]]", "max_output_tokens": 16}
            if previous:
                body["previous_response_id"] = previous
            async with session.post(base + "/v1/responses", json=body) as response:
                assert response.status == 200, await response.text()
                previous = (await response.json())["id"]
    return previous


async def rebuild(response_id: str, reads: int) -> tuple[float, int]:
    from llmgateway.responses_store import conversation_of, response_get

    times, items = [], 0
    for _ in range(reads):
        started = time.perf_counter()
        stored = await response_get(owner_id=None, response_id=response_id)
        items = len(conversation_of(stored))
        times.append(time.perf_counter() - started)
    return statistics.median(times), items


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-responses-"))
    db_path = workdir / "db.sqlite3"
    await asyncio.to_thread(setup_django, platform=False, sqlite_path=db_path)
    from django.db import connection

    from llmgateway.devtriton.server import free_port

    async with dev_stack(workdir, name=MODEL, context_length=8192, max_output_tokens=256):
        port = free_port()
        env = {"GATEWAY_PLATFORM": "false", "REQUEST_LOG_CONTENT": "true"}
        gateway = start_gateway(port, db_path, env)
        try:
            base = f"http://127.0.0.1:{port}"
            chat_ttft, responses_ttft = await ttft(base, args.runs)
            last = await chain(base, args.turns)
        finally:
            gateway.terminate()
            gateway.wait(10)
        rebuild_p50, items = await rebuild(last, args.reads)
    print(
        table(
            [
                ["measure", "value"],
                ["chat TTFT p50 (ms)", f"{chat_ttft * 1000:.2f}"],
                ["responses TTFT p50 (ms)", f"{responses_ttft * 1000:.2f}"],
                ["responses − chat (ms)", f"{(responses_ttft - chat_ttft) * 1000:+.2f}"],
                [
                    f"{args.turns}-turn rebuild p50 (ms, {items} items, {connection.vendor})",
                    f"{rebuild_p50 * 1000:.2f}",
                ],
            ]
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
