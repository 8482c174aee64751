"""Streaming through /v1/chat/completions vs a direct Triton stream.

    .venv/bin/python -m bench.bench_stream [--runs 30] [--long 4000] [--previous REF]

In one run, with dev Triton and one gateway worker (keys and quotas off, so this
measures the streaming path itself):
- time to first token, p50 over --runs short streams, gateway vs a direct Triton
  stream of the same request, with two pairs of clients: the standard ones
  (tritonclient's stream_infer; aiohttp) and lean ones (one grpc.aio call; a raw
  HTTP/1.1 connection parsed with httptools), which take the client libraries'
  own costs (about half a millisecond each, measured) out of both sides;
- gateway CPU per token (utime+stime of the worker from /proc), measured over
  windows of a --long-token stream: the cost must not grow with the output;
- as the baseline for that, the CPU per token a direct tritonclient stream of the
  same --long tokens costs its own (client) process, and per window what the
  gateway adds to it: its CPU per token minus the direct client's;
- with --previous REF, the time to first token of a second worker serving git
  revision REF, in the same alternating rounds (an A/B that machine drift between
  runs cannot blur).
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
    TOKENIZER,
    checkout,
    checkout_remove,
    cpu_seconds,
    dev_stack,
    direct_inputs,
    setup_django,
    start_gateway,
    table,
)

# The two client pairs time to first token is measured with.
CLIENT_PAIRS = {
    "standard": "tritonclient stream / aiohttp",
    "lean": "grpc.aio unary-stream / raw HTTP",
}
CHAT = "/v1/chat/completions"


def lean_direct_client(grpc_url: str):
    """A direct Triton stream with the least client-side work Python allows: one
    ModelStreamInfer call on a grpc.aio channel, the request built from protobufs.

    tritonclient's stream_infer (the standard pair) spends about half a millisecond
    of its own on the way to the first token; the raw HTTP client below spends far
    less than aiohttp. Comparing the lean pair shows what the gateway adds with the
    clients' own costs taken out of both sides.
    """
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2

    from llmgateway.textgen.tokenizer import load_text_model

    text = load_text_model(TOKENIZER)
    call = grpc.aio.insecure_channel(grpc_url).unary_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )

    async def first_token(prompt: str, max_tokens: int) -> float:
        start = time.perf_counter()
        ids = text.encode(text.render_chat([{"role": "user", "content": prompt}]))
        request = service_pb2.ModelInferRequest(model_name="tensorrt_llm")
        for name, array in (
            ("input_ids", np.array([ids], dtype=np.int32)),
            ("input_lengths", np.array([[len(ids)]], dtype=np.int32)),
            ("request_output_len", np.array([[max_tokens]], dtype=np.int32)),
            ("end_id", np.array([[text.end_id]], dtype=np.int32)),
            ("pad_id", np.array([[text.pad_id]], dtype=np.int32)),
            ("streaming", np.array([[True]])),
        ):
            tensor = request.inputs.add(
                name=name, datatype="BOOL" if array.dtype == bool else "INT32"
            )
            tensor.shape.extend(array.shape)
            request.raw_input_contents.append(array.tobytes())
        first = None
        stream = call(request)
        async for message in stream:
            assert not message.error_message, message.error_message
            if first is None:
                first = time.perf_counter() - start
            if message.infer_response.parameters["triton_final_response"].bool_param:
                break
        return first

    return first_token


class RawSSE(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection that posts a streamed chat completion and
    times its first content event: httptools (uvicorn's parser) instead of aiohttp."""

    @classmethod
    async def connect(cls, base: str) -> RawSSE:
        import httptools

        url = httptools.parse_url(base.encode())
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, url.host.decode(), url.port)
        protocol.host = f"{url.host.decode()}:{url.port}"
        return protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_status(self, status: bytes) -> None:
        assert self.parser.get_status_code() == 200, status

    def on_body(self, body: bytes) -> None:
        import orjson

        self.buffer += body
        while self.first is None and b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            if event.startswith(b"data: {"):
                choices = orjson.loads(event[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    self.first = time.perf_counter()

    def on_message_complete(self) -> None:
        self.done.set_result(None)

    async def first_content(self, prompt: str, max_tokens: int) -> float:
        import httptools
        import orjson

        body = orjson.dumps(
            {
                "model": "bench",
                "stream": True,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": prompt}],
            }
        )
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.parser = httptools.HttpResponseParser(self)
        self.buffer, self.first = b"", None
        self.done = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        self.transport.write(head.encode() + body)
        await self.done
        return self.first - start


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
        previous_tree = checkout(args.previous) if args.previous else None
        previous = None
        try:
            client = grpcclient.InferenceServerClient(triton.grpc_url)
            session = aiohttp.ClientSession()
            gateways = {"gateway": f"http://127.0.0.1:{port}"}
            if previous_tree is not None:
                previous_port = free_port()
                previous = start_gateway(
                    previous_port, db_path, {"GATEWAY_PLATFORM": "false"}, root=previous_tree
                )
                gateways[args.previous] = f"http://127.0.0.1:{previous_port}"

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

            async def gateway_stream(
                prompt: str, max_tokens: int, on_token=None, base: str = gateways["gateway"]
            ) -> float:
                body = {
                    "model": "bench",
                    "stream": True,
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": prompt}],
                }
                start = time.perf_counter()
                first = None
                tokens = 0
                async with session.post(f"{base}{CHAT}", json=body) as response:
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
            lean_direct = lean_direct_client(triton.grpc_url)
            # (client pair, gateway or REF) -> a TTFT call; each pair has its direct path.
            paths = {("standard", "direct"): lambda: direct_ttft(prompt, 8)}
            paths[("lean", "direct")] = lambda: lean_direct(prompt, 8)
            for name, base in gateways.items():
                raw = await RawSSE.connect(base)
                paths[("standard", name)] = lambda base=base: gateway_stream(prompt, 8, base=base)
                paths[("lean", name)] = lambda raw=raw: raw.first_content(prompt, 8)
            for _ in range(5):
                for call in paths.values():
                    await call()
            # Alternate, so a noisy neighbour hits every path alike.
            firsts: dict[tuple[str, str], list[float]] = {key: [] for key in paths}
            for _ in range(args.runs):
                for key, call in paths.items():
                    firsts[key].append(await call())
            ttft = {key: statistics.median(times) * 1000 for key, times in firsts.items()}

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
            direct_token_ms = statistics.mean(direct_per_token) * 1000

            windows = [["window (tokens)", "gateway CPU ms/token", "added over direct ms/token"]]
            for a, b in zip(marks, marks[1:], strict=False):
                per = statistics.mean(
                    (y - x) / (b - a) for x, y in zip(samples[a], samples[b], strict=True)
                )
                windows.append(
                    [f"{a}-{b}", f"{per * 1000:.4f}", f"{per * 1000 - direct_token_ms:+.4f}"]
                )
            await session.close()
            rows = [["clients", "direct p50 ms", *(f"{name} p50 ms" for name in gateways)]]
            for pair, clients in CLIENT_PAIRS.items():
                direct_ms = ttft[(pair, "direct")]
                rows.append(
                    [
                        clients,
                        f"{direct_ms:.2f}",
                        *(
                            f"{ttft[(pair, name)]:.2f} ({ttft[(pair, name)] - direct_ms:+.2f})"
                            for name in gateways
                        ),
                    ]
                )
            print(f"time to first token, {args.runs} alternating runs (added over direct)")
            print(table(rows))
            print(table(windows))
            print(
                f"direct tritonclient stream: {direct_token_ms:.4f} ms CPU per token (client process)"
            )
        finally:
            for process in (gateway, previous):
                if process is not None:
                    process.terminate()
                    process.wait(10)
            if previous_tree is not None:
                checkout_remove(previous_tree)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument("--long-runs", type=int, default=3)
    parser.add_argument("--previous", help="git revision whose time to first token to compare")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
