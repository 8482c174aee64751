"""An independent reference for Qwen-VL's image transform, used to make the fixtures.

Qwen-VL (visual.py) preprocesses with torchvision:
    Resize((448, 448), interpolation=BICUBIC) → ToTensor() → Normalize(CLIP mean, std)
On a PIL image, torchvision's Resize calls PIL's `Image.resize`, i.e. Pillow's C
resampler (libImaging/Resample.c). torch cannot be installed here (no CPU-only
wheel on the reachable index), so this module re-implements that resampler in numpy,
line by line from Resample.c: the bicubic kernel (a = -0.5) widened by the scale
factor when downsampling, coefficients normalised per output pixel and rounded to
22-bit fixed point, a horizontal pass then a vertical pass, each rounding and
clipping to uint8. Then ToTensor (/255 in float32) and Normalize ((x - mean) / std in
float32). It shares no code with llmgateway/vision/preprocess.py, which calls
PIL's resize and a lookup table.
"""

from __future__ import annotations

import math

import numpy as np

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
PRECISION_BITS = 32 - 8 - 2


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
        np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: first input index, tap count, fixed-point weights [out, ksize]."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, dtype=np.int64)
    counts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, ksize), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = _bicubic((np.arange(xmax) + xmin - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        starts[xx], counts[xx] = xmin, xmax
        weights[xx, :xmax] = w
    fixed = np.where(
        weights < 0,
        np.trunc(-0.5 + weights * (1 << PRECISION_BITS)),
        np.trunc(0.5 + weights * (1 << PRECISION_BITS)),
    ).astype(np.int64)
    return starts, counts, fixed


def _clip8(acc: np.ndarray) -> np.ndarray:
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def _pass(rows: np.ndarray, out_size: int) -> np.ndarray:
    """Resample axis 1 of [N, in, C] uint8 to [N, out_size, C] as Resample.c does."""
    starts, counts, fixed = _coefficients(rows.shape[1], out_size)
    data = rows.astype(np.int64)
    out = np.empty((rows.shape[0], out_size, rows.shape[2]), dtype=np.uint8)
    for xx in range(out_size):
        taps = data[:, starts[xx] : starts[xx] + counts[xx], :]
        acc = (1 << (PRECISION_BITS - 1)) + np.einsum("ntc,t->nc", taps, fixed[xx, : counts[xx]])
        out[:, xx, :] = _clip8(acc)
    return out


def resize_bicubic(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] → uint8 [size[1], size[0], 3], as PIL's Image.resize(size, BICUBIC)."""
    width, height = size
    out = rgb
    if width != rgb.shape[1]:
        # Pillow only runs the horizontal pass over the rows the vertical pass reads.
        vstarts, vcounts, _ = _coefficients(rgb.shape[0], height)
        first, last = vstarts[0], vstarts[-1] + vcounts[-1]
        out = _pass(out[first:last], width)
        rows_offset = first
    else:
        rows_offset = 0
    if height != rgb.shape[0]:
        starts, counts, fixed = _coefficients(rgb.shape[0], height)
        data = out.astype(np.int64)
        result = np.empty((height, out.shape[1], 3), dtype=np.uint8)
        for yy in range(height):
            start = starts[yy] - rows_offset
            taps = data[start : start + counts[yy]]
            acc = (1 << (PRECISION_BITS - 1)) + np.einsum(
                "twc,t->wc", taps, fixed[yy, : counts[yy]]
            )
            result[yy] = _clip8(acc)
        out = result
    return out


def qwen_vl_transform(rgb: np.ndarray, size: int = 448) -> np.ndarray:
    """uint8 [H, W, 3] RGB → float32 [3, size, size]: Resize → ToTensor → Normalize."""
    resized = resize_bicubic(rgb, (size, size))
    tensor = resized.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    return (tensor - CLIP_MEAN[:, None, None]) / CLIP_STD[:, None, None]
