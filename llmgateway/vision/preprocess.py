"""Qwen-VL's image transform without torch: pillow and numpy only.

Qwen-VL applies torchvision's Resize((448, 448), BICUBIC) → ToTensor → Normalize
(CLIP mean/std) to a PIL image. torchvision resizes PIL images with PIL itself,
so PIL's bicubic resize here is the same computation; ToTensor's /255 and the
normalisation fold into one 256-entry lookup table per channel.
tests/vision/test_preprocess.py checks this against reference fixtures.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.conf import settings
from PIL import Image, UnidentifiedImageError

from llmgateway.vision.intake import ImageRefused

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


def _lookup_table() -> np.ndarray:
    """[3, 256] float32: channel value v ↦ (v / 255 − mean) / std, as ToTensor + Normalize."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)[:, None]
    std = np.asarray(CLIP_STD, dtype=np.float32)[:, None]
    return ((levels[None, :] - mean) / std).astype(np.float32)


LUT = _lookup_table()
# One core is left to the event loop: with more preprocessing threads than spare
# cores, the loop waits for CPU (bench/vision.py measures the worst stall). This
# also bounds the CPU that images can take from one worker process.
_EXECUTOR = ThreadPoolExecutor(
    max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="vision-preprocess"
)


def image_decode(data: bytes, *, param: str) -> Image.Image:
    """Decode PNG, JPEG, WebP or GIF (first frame) to RGB; ImageRefused otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > settings.VISION_MAX_PIXELS:
                raise ImageRefused(
                    f"The image is {width}×{height} pixels; at most "
                    f"{settings.VISION_MAX_PIXELS} pixels are accepted.",
                    param,
                )
            image.seek(0)  # GIF and animated WebP: the first frame
            image.load()
            # As Qwen-VL: convert("RGB") drops any alpha channel.
            return image.convert("RGB")
    except ImageRefused:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused("The data is not a PNG, JPEG, WebP or GIF image.", param) from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise ImageRefused("The image could not be decoded.", param) from None


def image_pixels(image: Image.Image, *, size: int) -> np.ndarray:
    """An RGB image → float32 [3, size, size], resized and normalised as Qwen-VL does."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    rgb = np.asarray(resized, dtype=np.uint8)
    out = np.empty((3, size, size), dtype=np.float32)
    for channel in range(3):
        np.take(LUT[channel], rgb[:, :, channel], out=out[channel])
    return out


def image_preprocess(data: bytes, *, param: str, size: int) -> np.ndarray:
    """Encoded bytes → float32 [3, size, size]. CPU-bound: call it off the event loop."""
    return image_pixels(image_decode(data, param=param), size=size)


async def images_preprocess(items: list[tuple[bytes, str]], *, size: int) -> np.ndarray:
    """(bytes, param) pairs → float32 [B, 3, size, size], each image in a worker thread.

    Pillow and numpy release the GIL while decoding, resizing and indexing, so the
    event loop keeps serving while images use the other cores.
    """
    loop = asyncio.get_running_loop()
    arrays = await asyncio.gather(
        *(
            loop.run_in_executor(
                _EXECUTOR, functools.partial(image_preprocess, data, param=param, size=size)
            )
            for data, param in items
        )
    )
    return np.stack(arrays)
