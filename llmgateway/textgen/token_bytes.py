"""Each token's own UTF-8 bytes, and the name logprobs give it, built once per tokenizer.

Logprobs report one token at a time, but a token need not be text on its own: a
byte-level BPE (Qwen, GPT-2) or a SentencePiece byte-fallback tokenizer (`<0xC3>`)
splits a character such as "é" or "👍" over several tokens. Decoding such a token
alone gives U+FFFD, which loses its bytes. OpenAI instead reports the token's real
bytes in `bytes`, so a client can join them back into characters, and names a token
that is not valid UTF-8 by itself `bytes:` followed by its bytes escaped as `\\xNN`
(valid parts stay as they are): `bytes:\\xc3` for the first byte of "é".

The bytes come from the vocabulary, not from decoding:

- a tokenizer shipped as code (Qwen-VL's tiktoken one) hands out each token's bytes;
- byte-level BPE writes each byte as one printable character (GPT-2's table);
- byte fallback writes a lone byte as `<0xNN>`, and a space as U+2581 (`▁`);
- added tokens are their text.

Anything else (an unknown scheme) falls back to the decoded text, as before.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
METASPACE = "\u2581"


def _byte_level_table() -> dict[int, int]:
    """GPT-2's byte-level alphabet read backwards, as a str.translate table.

    Bytes that are printable (and not a space) stand for themselves; the other 68
    are written as the characters from U+0100 up, in byte order. Translating a
    token's characters with this table gives one latin-1 character per byte.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: b for b in printable}
    shifted = (b for b in range(256) if b not in table)
    for offset, byte in enumerate(shifted):
        table[0x100 + offset] = byte
    return table


BYTE_LEVEL = _byte_level_table()


@dataclass(frozen=True, slots=True)
class TokenPieces:
    """Per token id: the name logprobs give it (`names`) and its bytes (`raw`)."""

    names: tuple[str, ...]
    raw: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.raw)


def token_name(raw: bytes) -> str:
    """The token as OpenAI names it: its text, or `bytes:` + its bytes escaped where
    they are not valid UTF-8 on their own."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + raw.decode("utf-8", "backslashreplace")


def _scheme(tokenizer: Any, vocab: dict[str, int]) -> str:
    """How the vocabulary writes bytes: "byte_level", "byte_fallback", "metaspace"
    (SentencePiece without byte fallback: pieces are text, U+2581 a space) or "text"."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        try:
            state = json.loads(decoder.__getstate__())
        except Exception:  # a decoder that does not serialise: judge by the vocabulary
            state = None
        kinds = _decoder_kinds(state)
        if "ByteLevel" in kinds:
            return "byte_level"
        if "ByteFallback" in kinds:
            return "byte_fallback"
        if kinds & {"Metaspace", "Replace"}:
            return "metaspace"
    if getattr(tokenizer, "byte_decoder", None) is not None:  # slow GPT-2 / Qwen2 classes
        return "byte_level"
    if all(chr(c) in vocab for c in BYTE_LEVEL):
        return "byte_level"  # a tokenizer shipped as code over a byte-level vocabulary
    if all(f"<0x{b:02X}>" in vocab for b in range(256)):
        return "byte_fallback"
    return "text"


def _decoder_kinds(state: Any) -> set[str]:
    if not isinstance(state, dict):
        return set()
    kinds = {state.get("type")}
    for inner in state.get("decoders") or ():
        kinds |= _decoder_kinds(inner)
    return {k for k in kinds if isinstance(k, str)}


def _piece_bytes(piece: str, scheme: str) -> bytes | None:
    if scheme == "byte_level":
        latin = piece.translate(BYTE_LEVEL)
        try:
            return latin.encode("latin-1")
        except UnicodeEncodeError:
            return None
    if scheme in ("byte_fallback", "metaspace"):
        if scheme == "byte_fallback":
            byte = BYTE_FALLBACK.fullmatch(piece)
            if byte is not None:
                return bytes([int(byte.group(1), 16)])
        return piece.replace(METASPACE, " ").encode("utf-8")
    return None


def _decoded(tokenizer: Any, token: int) -> bytes:
    try:
        return tokenizer.decode([token]).encode("utf-8")
    except Exception:  # an id the vocabulary skips
        return b""


def token_pieces_build(tokenizer: Any) -> TokenPieces:
    """Every token's bytes and name; for the loading thread (it walks the vocabulary)."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    pieces: list[Any] = [None] * size
    for piece, token in vocab.items():
        pieces[token] = piece
    added = {
        token: entry.content
        for token, entry in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
    }
    scheme = _scheme(tokenizer, vocab)
    raw: list[bytes] = []
    for token, piece in enumerate(pieces):
        value: bytes | None
        if token in added:
            value = added[token].encode("utf-8")
        elif isinstance(piece, bytes):  # tiktoken: the vocabulary is bytes
            value = piece
        elif isinstance(piece, str):
            value = _piece_bytes(piece, scheme)
        else:
            value = None
        if value is None:
            value = _decoded(tokenizer, token)
        raw.append(value)
    logger.debug("token bytes for %d tokens (%s)", len(raw), scheme)
    return TokenPieces(names=tuple(token_name(r) for r in raw), raw=tuple(raw))


# Ids decoded together per check of the byte table against the tokenizer's decode.
CHECK_SPAN = 64


def stream_bytes_build(tokenizer: Any, pieces: TokenPieces) -> tuple[bytes, ...] | None:
    """Per token id, the bytes a byte-level tokenizer's decode gives it (for
    detokenizer.ByteDetokenizer), or None when the tokenizer's decoder is not exactly
    ByteLevel or the table disagrees with its decode.

    Added tokens are taken from the tokenizer's own decode (how ByteLevel treats
    them has changed between `tokenizers` versions); then the whole vocabulary is
    decoded in spans of CHECK_SPAN ids, both ways, including the invalid byte runs
    that arbitrary neighbours make: one difference and the table is not used.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return None
    try:
        kind = json.loads(decoder.__getstate__()).get("type")
    except Exception:  # a decoder that does not serialise
        return None
    if kind != "ByteLevel":
        return None
    raw = list(pieces.raw)
    for token in getattr(tokenizer, "added_tokens_decoder", None) or {}:
        if token < len(raw):
            raw[token] = backend.decode([token], skip_special_tokens=False).encode("utf-8")
    special = set(getattr(tokenizer, "all_special_ids", ()))
    ids = [i for i in range(len(raw)) if i not in special]
    for start in range(0, len(ids), CHECK_SPAN):
        span = ids[start : start + CHECK_SPAN]
        ours = b"".join(raw[i] for i in span).decode("utf-8", "replace")
        if ours != backend.decode(span, skip_special_tokens=False):
            logger.info(
                "byte table of %s disagrees with its decode: windowed detokenizer", tokenizer
            )
            return None
    return tuple(raw)
