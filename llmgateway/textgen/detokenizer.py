"""Incremental detokenization: text deltas from a growing list of token ids.

Decoding each new token on its own breaks in two ways: SentencePiece drops a
word's leading space, and a character whose UTF-8 bytes span several byte-level
tokens decodes to U+FFFD. We decode a small window instead (the approach of
vLLM and HF's TextStreamer): the text of ids[prefix:] minus the text of
ids[prefix:read] is what the new tokens add. While that ends in U+FFFD the
character is incomplete, so nothing is emitted and the window grows by one
token. Each step decodes a window of a few tokens: O(new tokens), not O(output).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
# Prompt tokens used as left context so the first token keeps its leading space.
CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(
        self, tokenizer: Any, special_ids: frozenset[int], prompt_ids: Sequence[int] = ()
    ) -> None:
        # The Rust tokenizer, when there is one: same output as tokenizer.decode, less overhead.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._decode = backend.decode if backend is not None else tokenizer.decode
        self._special = special_ids
        # int(): the ids may be the prompt's int32 tensor (GenerationRequest.input_ids).
        context = [int(i) for i in prompt_ids[-CONTEXT_TOKENS:] if i not in special_ids]
        self._ids: list[int] = list(context)
        self._prefix = 0
        self._read = len(context)

    def push(self, token_ids: list[int]) -> str:
        """Add generated ids; return the text they complete (may be empty)."""
        special = self._special
        self._ids.extend(i for i in token_ids if i not in special)
        if len(self._ids) == self._read:
            return ""
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back, at the end of the sequence.

        A character cut off by the output limit is dropped rather than sent as U+FFFD.
        """
        if len(self._ids) == self._read:
            return ""
        return self._advance(final=True).rstrip(REPLACEMENT)

    def _advance(self, *, final: bool) -> str:
        ids = self._ids
        prefix_text = (
            self._decode(ids[self._prefix : self._read]) if self._read > self._prefix else ""
        )
        full_text = self._decode(ids[self._prefix :])
        if not final and full_text.endswith(REPLACEMENT):
            return ""
        if len(full_text) < len(prefix_text) or not full_text.startswith(prefix_text):
            # A merge changed earlier text (rare; cleanup rules). Emit only the new tail.
            delta = full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""
        else:
            delta = full_text[len(prefix_text) :]
        self._prefix = self._read
        self._read = len(ids)
        return delta


class ByteDetokenizer:
    """The same text deltas for a byte-level tokenizer, from each token's bytes.

    A byte-level BPE's decode is its tokens' bytes joined and read as UTF-8 (invalid
    bytes as U+FFFD), so an incremental UTF-8 decoder over each token's bytes
    (`token_bytes`, TextModel.stream_bytes: checked against the tokenizer's own decode
    when it is built) gives what the window above gives, for a table lookup per token
    instead of two decodes. As there, a character split over tokens waits for its last
    byte, and U+FFFD at the end of what is known is held back until more follows; at
    the end it is dropped.
    """

    __slots__ = ("_bytes", "_special", "_decode", "_held")

    def __init__(self, token_bytes: tuple[bytes, ...], special_ids: frozenset[int]) -> None:
        self._bytes = token_bytes
        self._special = special_ids
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._held = ""

    def push(self, token_ids: list[int]) -> str:
        table, special = self._bytes, self._special
        size = len(table)
        if len(token_ids) == 1:
            token = token_ids[0]
            if token in special or token >= size:
                return ""
            text = self._decode(table[token])
        else:
            text = self._decode(
                b"".join(table[t] for t in token_ids if t not in special and t < size)
            )
        if self._held:
            text, self._held = self._held + text, ""
        if text.endswith(REPLACEMENT):
            kept = text.rstrip(REPLACEMENT)
            self._held = text[len(kept) :]
            return kept
        return text

    def flush(self) -> str:
        return (self._held + self._decode(b"", True)).rstrip(REPLACEMENT)
