"""Preprocessing matches Qwen-VL's torchvision transform (reference fixtures) within 1e-3."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from llmgateway.vision.intake import ImageRefused
from llmgateway.vision.preprocess import image_preprocess, images_preprocess
from tests.vision import images

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
TOLERANCE = 1e-3


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_matches_reference(name: str) -> None:
    expected = REFERENCE[name]
    pixels = image_preprocess((FIXTURES / name).read_bytes(), param="images[0]", size=448)
    assert pixels.shape == (3, 448, 448)
    assert pixels.dtype == np.float32
    means = pixels.mean(axis=(1, 2), dtype=np.float64)
    np.testing.assert_allclose(means, expected["channel_means"], atol=TOLERANCE)
    for channel, y, x, value in expected["samples"]:
        assert abs(float(pixels[channel, y, x]) - value) < TOLERANCE, (name, channel, y, x)


def test_gif_uses_the_first_frame() -> None:
    pixels = image_preprocess((FIXTURES / "anim.gif").read_bytes(), param="p", size=448)
    rgb = pixels.mean(axis=(1, 2))
    assert rgb[0] > rgb[2]  # the first frame is red, the second blue


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not an image", "not a PNG, JPEG, WebP or GIF"),
        (images.encode(images.solid(images.RED), "BMP"), "not a PNG, JPEG, WebP or GIF"),
        (images.encode(images.photo_like((64, 48)), "PNG")[:300], "could not be decoded"),
    ],
)
def test_bad_images_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ImageRefused) as caught:
        image_preprocess(data, param="images[2]", size=448)
    assert message in caught.value.message
    assert caught.value.param == "images[2]"


def test_pixel_limit(settings) -> None:
    settings.VISION_MAX_PIXELS = 100 * 100
    data = images.encode(images.solid(images.RED, (101, 100)), "PNG")
    with pytest.raises(ImageRefused, match="pixels"):
        image_preprocess(data, param="p", size=448)


async def test_batch_runs_off_the_event_loop() -> None:
    """Several images preprocess in threads while the loop keeps ticking."""
    data = images.encode(images.photo_like((1024, 768)), "JPEG", quality=90)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    pixels = await images_preprocess([(data, f"images[{i}]") for i in range(4)], size=448)
    elapsed = time.perf_counter() - started
    done.set()
    await task
    assert pixels.shape == (4, 3, 448, 448)
    # The loop ticked through the work: not blocked for its whole duration.
    assert ticks >= max(2, int(elapsed / 0.001 / 4))
