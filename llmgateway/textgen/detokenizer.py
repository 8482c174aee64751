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

from typing import Any

REPLACEMENT = "\ufffd"
# Prompt tokens used as left context so the first token keeps its leading space.
CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(
        self, tokenizer: Any, special_ids: frozenset[int], prompt_ids: list[int] = ()
    ) -> None:
        # The Rust tokenizer, when there is one: same output as tokenizer.decode, less overhead.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._decode = backend.decode if backend is not None else tokenizer.decode
        self._special = special_ids
        context = [i for i in prompt_ids[-CONTEXT_TOKENS:] if i not in special_ids]
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
