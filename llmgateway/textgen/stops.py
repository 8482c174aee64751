"""Stop strings matched on text, across chunk boundaries.

Token-level stop words in TensorRT-LLM depend on how the string happens to be
tokenized, so the gateway also matches on decoded text. Text that could still
be the start of a stop string is held back until the next chunk decides it; on
a match the output is cut before the stop string (OpenAI semantics).
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Return the text that is safe to emit; sets `matched` on a stop."""
        if not self._stops:
            return text
        if self.matched is not None or not text:
            return ""
        buffer = self._held + text
        cut = -1
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and (cut == -1 or at < cut):
                cut, self.matched = at, stop
        if cut != -1:
            self._held = ""
            return buffer[:cut]
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation no stop can complete: release what was held."""
        held, self._held = self._held, ""
        return held if self.matched is None else ""

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:size]):
                    best = size
                    break
        return best


class ThoughtGate:
    """Holds stop strings off a model's reasoning: text from `start` to `end` at the
    beginning of the answer passes unmatched, and only what follows `end` is the
    answer that stop strings (and the rest) apply to.

    `push` returns (reasoning, answer) raw text, tags included in the reasoning; an
    answer that does not open with `start` (after whitespace) is answer from its first
    character. `thinking` is true until that is known, and while the reasoning lasts.
    """

    __slots__ = ("start", "end", "thinking", "reasoned", "_held", "_decided")

    def __init__(self, start: str, end: str) -> None:
        self.start, self.end = start, end
        self.thinking = True
        self.reasoned = False  # the answer opened with `start`
        self._held = ""
        self._decided = False

    def push(self, text: str) -> tuple[str, str]:
        if not self.thinking:
            return "", text
        buffer = self._held + text
        self._held = ""
        if not self._decided:
            head = buffer.lstrip()
            if not head or (len(head) < len(self.start) and self.start.startswith(head)):
                self._held = buffer
                return "", ""
            self._decided = True
            if not head.startswith(self.start):
                self.thinking = False
                return "", buffer
            self.reasoned = True
        # Search the whole reasoning so far's tail: `end` may straddle pieces.
        at = buffer.find(self.end)
        if at == -1:
            keep = min(len(self.end) - 1, len(buffer))
            self._held = buffer[len(buffer) - keep :] if keep else ""
            return buffer[: len(buffer) - keep], ""
        cut = at + len(self.end)
        self.thinking = False
        return buffer[:cut], buffer[cut:]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
