"""Vision: preprocessing time per image, and /generate latency with one image.

    .venv/bin/python bench/vision.py [--images 200] [--requests 50]

1. Preprocessing of a 1024×768 JPEG (decode, bicubic resize to 448×448, normalise)
   pinned to one core; target < 10 ms. Also the event loop's worst stall while
   images are preprocessed through `images_preprocess` (it must stay near the
   ticker's 1 ms period: the work runs in threads).
2. End to end: dev Triton with the Qwen-VL pair and one gateway worker; /generate
   with one image (a data: URL) vs the same prompt without it, p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import dev_stack, run_load, start_gateway, table  # noqa: E402


def photo_jpeg() -> bytes:
    from tests.vision import images

    return images.encode(images.photo_like((1024, 768)), "JPEG", quality=90)


def preprocessing(count: int) -> list[list[str]]:

    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        return _preprocessing(count)
    finally:
        os.sched_setaffinity(0, cores)


def _preprocessing(count: int) -> list[list[str]]:
    import numpy as np
    from PIL import Image

    from llmgateway.vision.preprocess import LUT, image_decode, image_preprocess

    data = photo_jpeg()
    for _ in range(10):
        image_preprocess(data, param="bench", size=448)
    steps: dict[str, list[float]] = {"decode": [], "resize": [], "normalise": [], "total": []}
    for _ in range(count):
        t0 = time.perf_counter()
        image = image_decode(data, param="bench")
        t1 = time.perf_counter()
        resized = np.asarray(image.resize((448, 448), Image.Resampling.BICUBIC))
        t2 = time.perf_counter()
        out = np.empty((3, 448, 448), dtype=np.float32)
        for channel in range(3):
            np.take(LUT[channel], resized[:, :, channel], out=out[channel])
        t3 = time.perf_counter()
        steps["decode"].append(t1 - t0)
        steps["resize"].append(t2 - t1)
        steps["normalise"].append(t3 - t2)
        steps["total"].append(t3 - t0)
    rows = [["1024×768 JPEG, one core", "p50 ms", "p95 ms"]]
    for name, values in steps.items():
        ordered = sorted(values)
        rows.append(
            [
                name,
                f"{statistics.median(values) * 1000:.2f}",
                f"{ordered[int(len(ordered) * 0.95) - 1] * 1000:.2f}",
            ]
        )
    return rows


async def loop_stall(batches: int = 20) -> float:
    """Worst gap (ms) between 1 ms ticks while 4-image batches preprocess."""
    from llmgateway.vision.preprocess import images_preprocess

    data = photo_jpeg()
    worst, done = 0.0, asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    task = asyncio.create_task(ticker())
    for _ in range(batches):
        await images_preprocess([(data, "bench")] * 4, size=448)
    done.set()
    await task
    return worst * 1000


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


async def end_to_end(requests: int) -> list[list[str]]:
    import aiohttp

    from llmgateway.devtriton.server import free_port
    from tests.vision import images

    db_path = Path(os.environ["SQLITE_PATH"])
    workdir = db_path.parent
    await asyncio.to_thread(migrate)
    models = {"qwen-vl-visual": "qwen_vl_visual", "qwen-vl-llm": "qwen_vl_llm"}
    async with dev_stack(
        workdir, models=models, name="vl", triton_model="qwen-vl-llm", model_type="qwen-vl"
    ):
        port = free_port()
        gateway = start_gateway(port, db_path, {"GATEWAY_PLATFORM": "false"})
        try:
            image = images.data_url(photo_jpeg(), "JPEG")
            session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
            rows = [["/generate, concurrency 1", "p50 ms", "p95 ms"]]
            for name, body in (
                ("text only", {"model": "vl", "prompt": "Describe.", "max_output_len": 16}),
                (
                    "one 1024×768 JPEG",
                    {"model": "vl", "prompt": "Describe.", "images": [image], "max_output_len": 16},
                ),
            ):

                async def call(body=body) -> None:
                    async with session.post("/generate", json=body) as response:
                        assert response.status == 200, await response.text()
                        await response.read()

                latencies, _ = await run_load(call, concurrency=1, requests=requests, warmup=5)
                ordered = sorted(latencies)
                rows.append(
                    [
                        name,
                        f"{statistics.median(latencies) * 1000:.2f}",
                        f"{ordered[int(len(ordered) * 0.95) - 1] * 1000:.2f}",
                    ]
                )
            await session.close()
            return rows
        finally:
            gateway.terminate()
            gateway.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    # The bench's own database, set before Django reads its settings.
    workdir = Path(tempfile.mkdtemp(prefix="bench-vision-"))
    os.environ["SQLITE_PATH"] = str(workdir / "bench.sqlite3")
    os.environ["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", "")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")
    import django

    django.setup()
    print(table(preprocessing(args.images)))
    stall = asyncio.run(loop_stall())
    print(f"worst event-loop stall, 4-image batches preprocessing (all cores): {stall:.2f} ms")
    print(table(asyncio.run(end_to_end(args.requests))))


if __name__ == "__main__":
    main()
