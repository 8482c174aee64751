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

import numpy as np

from bench.common import TOKENIZER, compare, rss_mb, start_gateway, table


def setup_django(db_path: Path) -> None:
    import os

    os.environ["SQLITE_PATH"] = str(db_path)
    # The bare gateway: keys, quotas and logs are measured by bench_platform.py.
    os.environ["GATEWAY_PLATFORM"] = "false"
    os.environ.setdefault("DATABASE_URL", os.environ.get("BENCH_DATABASE_URL", ""))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


async def bench(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    db_path = workdir / "bench.sqlite3"
    await asyncio.to_thread(setup_django, db_path)
    import aiohttp
    import tritonclient.grpc.aio as grpcclient

    from llmgateway.devtriton.server import DevTriton, free_port
    from llmgateway.services import model_upsert
    from llmgateway.textgen.tokenizer import load_text_model

    with DevTriton(
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        models={"tensorrt_llm": args.trtllm_version},
        state_dir=workdir / "triton",
    ) as triton:
        await asyncio.to_thread(
            model_upsert,
            name="bench",
            triton_url=triton.grpc_url,
            triton_model="tensorrt_llm",
            tokenizer_path=TOKENIZER,
        )
        port = free_port()
        gateway = start_gateway(port, db_path, {"GATEWAY_PLATFORM": "false"})
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
                    tensor = grpcclient.InferInput(
                        name, value.shape, "BOOL" if value.dtype == bool else "INT32"
                    )
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

            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), base_url=f"http://127.0.0.1:{port}"
            )
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
