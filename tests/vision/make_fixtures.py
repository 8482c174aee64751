"""Write tests/vision/fixtures/: test images and Qwen-VL transform reference values.

Run once (the output is committed):  .venv/bin/python -m tests.vision.make_fixtures

References come from tests/vision/reference.py (a numpy re-implementation of the
torchvision/PIL transform, independent of the production code). Decoding uses PIL,
as Qwen-VL does (`Image.open(...).convert("RGB")`); the transform after it is what
the fixtures pin. Each fixture stores per-channel means and 48 sampled values.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.vision import images
from tests.vision.reference import qwen_vl_transform

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLES = 48


def _inputs() -> dict[str, bytes]:
    photo = images.photo_like((320, 240))
    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8))
    rgba = images.photo_like((120, 90), seed=11).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((120, 90)))
    frames = [images.solid(images.RED, (80, 60)), images.solid(images.BLUE, (80, 60))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return {
        "photo.png": images.encode(photo, "PNG"),
        "photo.jpg": images.encode(photo, "JPEG", quality=90),
        "photo.webp": images.encode(photo, "WEBP", lossless=True),
        "gradient.png": images.encode(images.gradient((500, 300)), "PNG"),
        "noise_small.png": images.encode(noise, "PNG"),
        "rgba.png": images.encode(rgba, "PNG"),
        "anim.gif": gif.getvalue(),
    }


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    positions = np.stack(
        [rng.integers(0, 3, SAMPLES), rng.integers(0, 448, SAMPLES), rng.integers(0, 448, SAMPLES)],
        axis=1,
    ).tolist()
    reference = {}
    for name, data in _inputs().items():
        (FIXTURES / name).write_bytes(data)
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        tensor = qwen_vl_transform(rgb)
        reference[name] = {
            "source_size": [rgb.shape[1], rgb.shape[0]],
            "channel_means": tensor.mean(axis=(1, 2), dtype=np.float64).tolist(),
            "samples": [[c, y, x, float(tensor[c, y, x])] for c, y, x in positions],
        }
    (FIXTURES / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
