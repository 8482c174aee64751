"""Qwen-VL prompt construction: image spans of fake ids and the prompt embedding table.

Qwen-VL writes each image as `Picture N: <img>…</img>\\n`, where the tokenizer pads
what lies between the tags to exactly `image_tokens` (256) positions. TensorRT-LLM
takes those positions as fake ids `vocab_size + k` (k counting over all images of
the prompt) and looks row k up in the per-request `prompt_embedding_table`, the
visual encoder's output. The tag ids and `vocab_size` come from the tokenizer
directory (its tokens and config.json), never from constants.

Image spans are placed with sentinels: the caller renders its messages (chat
template and all) with `sentinel(i)` where image i goes, and `prompt_ids` tokenizes
the text between sentinels and splices the spans in. Text a client sends can
therefore never create or move an image span.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from llmgateway.textgen.tokenizer import TextModel

IMG_START, IMG_END, IMG_PAD = "<img>", "</img>", "<imgpad>"


class VisionConfigError(Exception):
    """The model's tokenizer directory lacks what Qwen-VL prompts need."""


@dataclass(frozen=True, slots=True)
class VisionTokens:
    img_start: int
    img_end: int
    img_pad: int
    vocab_size: int  # the LLM's (padded) vocabulary: fake ids start here


@lru_cache(maxsize=16)
def _config(path: str) -> dict:
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VisionConfigError(f"cannot read {file}: {exc}") from exc


def vision_tokens(text: TextModel) -> VisionTokens:
    """The image tag ids from the tokenizer and vocab_size from its config.json."""
    tokenizer = text.tokenizer
    ids = {}
    for token in (IMG_START, IMG_END, IMG_PAD):
        value = tokenizer.convert_tokens_to_ids(token)
        if value is None or value == tokenizer.unk_token_id:
            raise VisionConfigError(f"tokenizer at {text.path} has no {token} token")
        ids[token] = int(value)
    vocab_size = _config(text.path).get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size <= max(ids.values()):
        raise VisionConfigError(f"{text.path}/config.json needs vocab_size above the tag ids")
    return VisionTokens(ids[IMG_START], ids[IMG_END], ids[IMG_PAD], vocab_size)


class Sentinels:
    """Unguessable markers for image positions in rendered text."""

    def __init__(self) -> None:
        self._nonce = secrets.token_hex(8)
        self._pattern = re.compile(rf"\u0001img:{self._nonce}:(\d+)\u0001")

    def __call__(self, index: int) -> str:
        return f"\u0001img:{self._nonce}:{index}\u0001"

    def split(self, rendered: str) -> tuple[list[str], list[int]]:
        """Text pieces and the image index between each pair of them."""
        parts = self._pattern.split(rendered)
        return parts[0::2], [int(i) for i in parts[1::2]]


def prompt_ids(
    *,
    text: TextModel,
    tokens: VisionTokens,
    rendered: str,
    sentinels: Sentinels,
    image_count: int,
    image_tokens: int,
) -> list[int]:
    """Token ids of `rendered` with each sentinel expanded to `<img>` + fake ids + `</img>`."""
    pieces, order = sentinels.split(rendered)
    if order != list(range(image_count)):
        raise VisionConfigError(
            f"the chat template kept images {order} of {image_count}; it must keep "
            "message content as it is"
        )
    ids: list[int] = []
    for index, piece in enumerate(pieces):
        if piece:
            ids += text.encode(piece)
        if index < image_count:
            first = tokens.vocab_size + index * image_tokens
            ids += [tokens.img_start, *range(first, first + image_tokens), tokens.img_end]
    return ids


def table_inputs(
    *,
    features: np.ndarray,
    table_dtype: type,
    prompt: list[int],
    tokens: VisionTokens,
    image_digests: list[bytes],
) -> dict[str, np.ndarray]:
    """The LLM's extra inputs for [images, image_tokens, hidden] encoder features.

    `prompt_table_extra_ids` (TensorRT-LLM ≥ 0.13) gives every image position the
    digest of its image, so the KV cache never reuses one image's blocks for
    another's; it is only sent where the model declares it.
    """
    rows = features.shape[0] * features.shape[1]
    table = np.ascontiguousarray(features.reshape(rows, features.shape[2]), dtype=table_dtype)
    per_image = features.shape[1]
    salts = [int.from_bytes(d[:8], "little") or 1 for d in image_digests]
    ids = np.asarray(prompt, dtype=np.int64) - tokens.vocab_size
    extra = np.zeros(len(prompt), dtype=np.uint64)
    fake = (ids >= 0) & (ids < rows)
    extra[fake] = np.asarray(salts, dtype=np.uint64)[ids[fake] // per_image]
    return {
        "prompt_embedding_table": table,
        "prompt_vocab_size": np.array([rows], dtype=np.int32),
        "prompt_table_extra_ids": extra,
    }


def image_digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()
