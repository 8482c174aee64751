"""A TCP proxy that delays every byte by a fixed time each way: a remote Redis, locally.

    .venv/bin/python -m bench.delay_proxy --port 7000 --to 127.0.0.1:6379 --delay-ms 0.5

bench_platform --redis-delay-ms runs one in front of Redis, so the quota store's round
trip is what it would be across a network (Kubernetes: Redis on another node). Each
direction keeps its order and pipelining: data is forwarded `delay` after it arrived,
not after the previous chunk left.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path


def delay_proxy_start(port: int, target: str, delay_ms: float) -> subprocess.Popen:
    """Run the proxy on 127.0.0.1:`port` in front of `target` (host:port)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.delay_proxy", "--port", str(port), "--to", target]
        + ["--delay-ms", str(delay_ms)],
        cwd=Path(__file__).resolve().parent.parent,
    )


async def pump(reader, writer, delay: float) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def forward() -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(forward())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    finally:
        queue.put_nowait(None)
        await task


async def main(args) -> None:
    host, port = args.to.rsplit(":", 1)
    delay = args.delay_ms / 1000

    async def handle(client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(
            pump(client_reader, server_writer, delay),
            pump(server_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    asyncio.run(main(parser.parse_args()))
