"""The interface every reasoning format implements, and the tagged kind most use."""

from __future__ import annotations

from typing import ClassVar

from llmgateway.textgen.tools.parsing import partial_suffix


class ReasoningSplitter:
    """Splits one choice's answer, fed as it streams or whole, into reasoning and answer.

    `feed` and `finish` return (reasoning, answer) text added by that piece. Reasoning
    always comes before the answer, so one pair per piece keeps the order. `thinking`
    is true while the text fed so far may still be reasoning (the engine's stop
    strings wait for it to turn false).
    """

    thinking: bool = False

    def feed(self, text: str) -> tuple[str, str]:
        return "", text

    def finish(self) -> tuple[str, str]:
        return "", ""


class TagSplitter(ReasoningSplitter):
    """Reasoning between `start` and `end` tags at the beginning of the answer.

    Undecided until the answer's first characters (after whitespace) show whether it
    opens with `start`; an answer that does not is all answer. Whitespace right after
    either tag is dropped, as the templates that write these tags put newlines there.
    """

    def __init__(self, start: str, end: str) -> None:
        self.start, self.end = start, end
        self.state = "undecided"  # → "reasoning" → "answer"
        self.thinking = True
        self._held = ""
        self._strip = False  # drop whitespace until the next other character

    def _lstrip(self, text: str) -> str:
        if self._strip:
            stripped = text.lstrip()
            if stripped:
                self._strip = False
            return stripped
        return text

    def feed(self, text: str) -> tuple[str, str]:
        buffer = self._held + text
        self._held = ""
        reasoning = answer = ""
        if self.state == "undecided":
            head = buffer.lstrip()
            if not head or (len(head) < len(self.start) and self.start.startswith(head)):
                self._held = buffer
                return "", ""
            if head.startswith(self.start):
                self.state, self._strip = "reasoning", True
                buffer = head[len(self.start) :]
            else:
                self.state, self.thinking = "answer", False
                return "", buffer
        if self.state == "reasoning":
            at = buffer.find(self.end)
            if at == -1:
                keep = partial_suffix(buffer, self.end)
                # Whitespace before the end tag is the template's, not the reasoning's:
                # what could be that is held with what could be the tag.
                out = buffer[: len(buffer) - keep]
                shown = out.rstrip()
                self._held = buffer[len(shown) :]
                return self._lstrip(shown), ""
            reasoning = self._lstrip(buffer[:at].rstrip())
            self.state, self.thinking, self._strip = "answer", False, True
            buffer = buffer[at + len(self.end) :]
        answer = self._lstrip(buffer)
        return reasoning, answer

    def finish(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        self.thinking = False
        if self.state == "reasoning":
            return self._lstrip(held.rstrip()), ""
        return "", held


class ReasoningFormat:
    """How one model family marks its reasoning. A module under reasoning/formats/
    defines one instance as `FORMAT`; the registry finds it by `name`."""

    name: ClassVar[str]
    label: ClassVar[str]

    @property
    def reasons(self) -> bool:
        return False

    def splitter(self) -> ReasoningSplitter | None:
        """A new splitter for one choice's answer; None when the format has no reasoning."""
        return None


class TaggedReasoning(ReasoningFormat):
    start: ClassVar[str]
    end: ClassVar[str]

    @property
    def reasons(self) -> bool:
        return True

    def splitter(self) -> TagSplitter:
        return TagSplitter(self.start, self.end)
