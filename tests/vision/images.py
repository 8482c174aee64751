"""Generated test images: solid colours, a gradient, a photo-like scene, and encoders."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

RED, BLUE, GREEN = (220, 20, 30), (25, 40, 210), (20, 160, 40)
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def gradient(
    size: tuple[int, int] = (320, 200),
    left: tuple[int, int, int] = (255, 0, 0),
    right: tuple[int, int, int] = (0, 0, 255),
) -> Image.Image:
    """Left to right, from `left` to `right`."""
    t = np.linspace(0.0, 1.0, size[0])[None, :, None]
    row = (1 - t) * np.array(left) + t * np.array(right)
    return Image.fromarray(np.repeat(row, size[1], axis=0).round().astype(np.uint8))


def photo_like(size: tuple[int, int] = (320, 240), seed: int = 7) -> Image.Image:
    """A blue sky over green hills with a sun, soft texture and noise."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    sky = np.stack(
        [0.08 + 0.12 * y / height, 0.25 + 0.15 * y / height, 0.95 - 0.05 * y / height], -1
    )
    horizon = 0.5 * height + 0.08 * height * np.sin(x / width * 2 * np.pi * 1.5)
    ground = np.stack(
        [0.12 + 0.05 * np.sin(x / 9), 0.5 + 0.1 * np.sin(y / 7) * np.cos(x / 11), 0.1 + 0 * x], -1
    )
    scene = np.where((y > horizon)[..., None], ground, sky)
    sun = (x - 0.78 * width) ** 2 + (y - 0.2 * height) ** 2 < (0.07 * width) ** 2
    scene[sun] = (1.0, 0.9, 0.3)
    scene += rng.normal(0, 0.03, scene.shape)
    return Image.fromarray((np.clip(scene, 0, 1) * 255).round().astype(np.uint8))


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def data_url(data: bytes, fmt: str = "PNG") -> str:
    return f"data:{MIME[fmt]};base64,{base64.b64encode(data).decode()}"
