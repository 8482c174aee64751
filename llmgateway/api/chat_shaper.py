"""Chat completions as OpenAI sends them: the `chat.completion` object, or its stream of
`chat.completion.chunk` events (tool calls included), ending in `data: [DONE]`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from llmgateway.api.openai_common import SYSTEM_FINGERPRINT, V1Shaper, chosen_tokens
from llmgateway.api.sse import DONE, ChunkFrame, TextChunks, head_first
from llmgateway.engine import Delta, TokenLogprob
from llmgateway.runner.endpoint import ChoiceResult, deltas
from llmgateway.textgen.reasoning import ReasoningFormat, ReasoningSplitter
from llmgateway.textgen.tools import parser_for
from llmgateway.textgen.tools.parsing import Parser, ToolCallDelta, answer_parse
from llmgateway.textgen.tools.plan import ToolPlan


def split_whole(fmt: ReasoningFormat, text: str) -> tuple[str, str]:
    """(reasoning, answer) of a whole answer: the streamed splitter fed it in one piece."""
    splitter = fmt.splitter()
    reasoning, answer = splitter.feed(text)
    more_reasoning, more_answer = splitter.finish()
    return reasoning + more_reasoning, answer + more_answer


def split_delta(splitter: ReasoningSplitter, delta: Delta) -> tuple[str, str]:
    """(reasoning, answer) a delta adds; its choice's last one releases what was held."""
    reasoning, answer = splitter.feed(delta.text) if delta.text else ("", "")
    if delta.finish_reason is not None:
        more_reasoning, more_answer = splitter.finish()
        reasoning, answer = reasoning + more_reasoning, answer + more_answer
    return reasoning, answer


def _call_dict(call: ToolCallDelta, legacy: bool) -> dict[str, Any]:
    """A streamed call delta: `index` on every one, `id`, `type` and the name on the first."""
    if legacy:
        if call.name is not None:
            return {"name": call.name, "arguments": call.arguments}
        return {"arguments": call.arguments}
    if call.id is not None:
        return {
            "index": call.index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
    return {"index": call.index, "function": {"arguments": call.arguments}}


class ChatShaper(V1Shaper):
    """Shapes one chat request's answer: the `chat.completion`, or the stream of
    `chat.completion.chunk`s. With tools in play (`plan`), each choice's text goes
    through the format's parser (textgen/tools/) into content and tool calls."""

    id_prefix = "chatcmpl-"

    def __init__(
        self,
        *,
        plan: ToolPlan | None,
        continues_thought: bool,
        reasoning: ReasoningFormat | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.plan = plan
        self.continues_thought = continues_thought
        # A reasoning model's format: its reasoning goes to `reasoning_content`, and
        # only the answer after it to content and the tool parser.
        self.reasoning = reasoning if reasoning is not None and reasoning.reasons else None

    def parser(self) -> Parser | None:
        if self.plan is None:
            return None
        return parser_for(self.plan, continues_thought=self.continues_thought)

    def _logprobs(self, tokens: list[TokenLogprob]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return {
            "content": [
                {"token": name, "logprob": lp, "bytes": list(raw), "top_logprobs": []}
                for name, raw, lp, _ in chosen_tokens(self.engine, tokens)
            ],
            "refusal": None,
        }

    def response(self, results: list[ChoiceResult]) -> dict[str, Any]:
        generation = self.generation
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [self._choice(result) for result in results],
            "usage": generation.usage.as_dict(),
        }

    def _choice(self, result: ChoiceResult) -> dict[str, Any]:
        text = result.text
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": [],
        }
        if self.reasoning is not None:
            reasoning, text = split_whole(self.reasoning, text)
            message["content"] = text
            message["reasoning_content"] = reasoning or None
        finish_reason = result.finish_reason
        parser = self.parser()
        if parser is not None:
            plan = self.plan
            answer = answer_parse(parser, text)
            message["content"] = answer.content or (None if answer.calls else "")
            finish_reason = plan.finish_reason(finish_reason, bool(answer.calls))
            if answer.calls and plan.legacy:
                message["function_call"] = _call_dict(answer.calls[0], True)
            elif answer.calls:
                # Exactly {id, type, function}: `index` belongs to stream deltas only.
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in answer.calls
                ]
        return {
            "index": result.index,
            "message": message,
            "logprobs": self._logprobs(result.tokens),
            "finish_reason": finish_reason,
        }

    @functools.cached_property
    def _frame(self) -> ChunkFrame:
        shared = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        return ChunkFrame(shared, usage_null=self.include_usage)

    @functools.cached_property
    def _text_chunk(self) -> TextChunks:
        """`_chunk(index, {"content": text})`, serialising only the text."""
        return self._frame.text_chunks(
            b'{"index":%d,"delta":{"content":', b'},"logprobs":null,"finish_reason":null}'
        )

    def _chunk(
        self,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        return self._frame.choice(
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each choice's role chunk, then the content.

        The role chunks go out in one write with the first content chunk, rather than
        in their own writes while Triton computes the first token: on the time to
        first token that is a write and a client wake-up fewer. The bytes are the same.
        """
        head = b"".join(
            self._chunk(index, {"role": "assistant", "content": "", "refusal": None})
            for index in range(self.generation.choice_count)
        )
        async with contextlib.aclosing(head_first(head, self._content_chunks())) as chunks:
            async for chunk in chunks:
                yield chunk
        yield DONE

    async def _content_chunks(self) -> AsyncIterator[bytes]:
        plan = self.plan
        parsers = [self.parser() for _ in range(self.generation.choice_count)]
        called = [False] * len(parsers)
        # Tool parsing: tokens of text the parser holds back, shown with its next chunk.
        held: list[list[TokenLogprob]] = [[] for _ in parsers]
        fmt = self.reasoning
        splitters = [fmt.splitter() for _ in parsers] if fmt is not None else None
        async with deltas(self.generation) as stream:
            async for delta in stream:
                if splitters is not None:
                    # The reasoning goes out on its own; the answer goes on as the delta.
                    reasoning, delta.text = split_delta(splitters[delta.index], delta)
                    if reasoning:
                        yield self._chunk(delta.index, {"reasoning_content": reasoning})
                parser = parsers[delta.index]
                if parser is None:
                    if not delta.text:
                        pass
                    elif self.logprobs:  # a delta's tokens start in its text (Delta.tokens)
                        logprobs = self._logprobs(delta.tokens)
                        yield self._chunk(delta.index, {"content": delta.text}, logprobs=logprobs)
                    else:
                        yield self._text_chunk(delta.index, delta.text)
                else:
                    tokens = held[delta.index]
                    tokens += delta.tokens
                    events = parser.feed(delta.text) if delta.text else []
                    if delta.finish_reason is not None:
                        events += parser.finish()
                    for item in events:
                        body = self._event_delta(item)
                        if body is None:
                            continue
                        called[delta.index] |= not isinstance(item, str)
                        yield self._chunk(delta.index, body, logprobs=self._logprobs(tokens))
                        tokens.clear()
                if delta.finish_reason is not None:
                    reason = delta.finish_reason
                    if plan is not None:
                        reason = plan.finish_reason(reason, called[delta.index])
                    self.finish_reasons[delta.index] = reason
                    # What a tool parser swallowed (a call's markup) goes with the finish.
                    rest = held[delta.index]
                    yield self._chunk(
                        delta.index, {}, reason, logprobs=self._logprobs(rest) if rest else None
                    )
        if self.include_usage:
            yield self._frame.usage(self.generation.usage.as_dict())

    def _event_delta(self, item: str | ToolCallDelta) -> dict[str, Any] | None:
        if isinstance(item, str):
            return {"content": item}
        if self.plan is not None and self.plan.legacy:
            # The legacy API has one function call per answer.
            return {"function_call": _call_dict(item, True)} if item.index == 0 else None
        return {"tool_calls": [_call_dict(item, False)]}
