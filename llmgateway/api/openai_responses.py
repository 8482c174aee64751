"""Shaping /v1 answers: JSON bodies and server-sent event chunks, as OpenAI sends them.

A shaper turns one job's results into `chat.completion` / `text_completion`
objects, or its deltas into chunks (framed and settled by
`llmgateway.generation.stream_settled`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from llmgateway.accounting import Reservation
from llmgateway.api.sse import ChunkFrame
from llmgateway.engine import (
    BatchGeneration,
    Engine,
    Generation,
    GenerationRequest,
    TokenLogprob,
)
from llmgateway.generation import ChoiceResult, deltas
from llmgateway.textgen.tools import parser_for
from llmgateway.textgen.tools.parsing import Parser, ToolCallDelta, answer_parse
from llmgateway.textgen.tools.plan import ToolPlan
from llmgateway.vision.service import VisionPrompt

logger = logging.getLogger(__name__)

# OpenAI's backend configuration id. The gateway has none to offer (the engine behind
# Triton is not known here), so it sends the key with null, as OpenAI may.
SYSTEM_FINGERPRINT = None


@dataclass(slots=True)
class Job:
    """A validated request, ready for Triton: what the route needs to answer it."""

    endpoint: str
    model: str
    generation: Generation | BatchGeneration
    requests: list[GenerationRequest]
    stream: bool
    include_usage: bool
    logprobs: bool = False
    plan: ToolPlan | None = None
    continues_thought: bool = False
    echo: list[str] = field(default_factory=list)  # completions: text before each choice
    vision: VisionPrompt | None = None  # images still to load into requests[0]
    # Filled in by a stream as choices finish, for the request log.
    finish_reasons: dict[int, str] = field(default_factory=dict)

    @property
    def reservation(self) -> Reservation:
        return Reservation(
            model=self.model,
            endpoint=self.endpoint,
            prompt_tokens=sum(len(r.prompt_ids) for r in self.requests),
            max_tokens=sum(r.params.max_tokens * r.n for r in self.requests),
            stream=self.stream,
        )

    def parser(self) -> Parser | None:
        if self.plan is None:
            return None
        return parser_for(self.plan, continues_thought=self.continues_thought)


def _chosen_tokens(
    engine: Engine, tokens: list[TokenLogprob]
) -> list[tuple[str, bytes, float | None, int]]:
    """(name, bytes, logprob, text offset) of each token shown (token_bytes.py)."""
    pieces = engine.text.token_pieces
    names, raw, size = pieces.names, pieces.raw, len(pieces)
    return [
        (names[t], raw[t], lp, offset) if t < size else ("", b"", lp, offset)
        for t, lp, offset in tokens
    ]


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


class ChatShaper:
    """Shapes one chat job's results: the JSON response, or the stream of chunks."""

    def __init__(self, job: Job, engine: Engine) -> None:
        self.job = job
        self.engine = engine
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def _logprobs(self, tokens: list[TokenLogprob]) -> dict[str, Any] | None:
        if not self.job.logprobs:
            return None
        return {
            "content": [
                {"token": name, "logprob": lp, "bytes": list(raw), "top_logprobs": []}
                for name, raw, lp, _ in _chosen_tokens(self.engine, tokens)
            ],
            "refusal": None,
        }

    def response(self, results: list[ChoiceResult]) -> dict[str, Any]:
        generation = self.job.generation
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.job.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [self._choice(result) for result in results],
            "usage": generation.usage.as_dict(),
        }

    def _choice(self, result: ChoiceResult) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": result.text,
            "refusal": None,
            "annotations": [],
        }
        finish_reason = result.finish_reason
        parser = self.job.parser()
        if parser is not None:
            plan = self.job.plan
            answer = answer_parse(parser, result.text)
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
            "model": self.job.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        return ChunkFrame(shared, usage_null=self.job.include_usage)

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
            for index in range(self.job.generation.choice_count)
        )
        try:
            async with contextlib.aclosing(self._content_chunks()) as body:
                async for chunk in body:
                    if head:
                        chunk, head = head + chunk, b""
                    yield chunk
        except Exception:
            if head:  # the stream failed before any content: its error follows the roles
                yield head
            raise
        if head:
            yield head

    async def _content_chunks(self) -> AsyncIterator[bytes]:
        job = self.job
        parsers = [job.parser() for _ in range(job.generation.choice_count)]
        called = [False] * len(parsers)
        # Tool parsing: tokens of text the parser holds back, shown with its next chunk.
        held: list[list[TokenLogprob]] = [[] for _ in parsers]
        async with deltas(job.generation) as stream:
            async for delta in stream:
                parser = parsers[delta.index]
                if parser is None:
                    if delta.text:  # a delta's tokens start in its text (Delta.tokens)
                        logprobs = self._logprobs(delta.tokens)
                        yield self._chunk(delta.index, {"content": delta.text}, logprobs=logprobs)
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
                    if job.plan is not None:
                        reason = job.plan.finish_reason(reason, called[delta.index])
                    job.finish_reasons[delta.index] = reason
                    # What a tool parser swallowed (a call's markup) goes with the finish.
                    rest = held[delta.index]
                    yield self._chunk(
                        delta.index, {}, reason, logprobs=self._logprobs(rest) if rest else None
                    )
        if job.include_usage:
            yield self._frame.usage(job.generation.usage.as_dict())

    def _event_delta(self, item: str | ToolCallDelta) -> dict[str, Any] | None:
        if isinstance(item, str):
            return {"content": item}
        if self.job.plan is not None and self.job.plan.legacy:
            # The legacy API has one function call per answer.
            return {"function_call": _call_dict(item, True)} if item.index == 0 else None
        return {"tool_calls": [_call_dict(item, False)]}


class CompletionShaper:
    """Shapes one completions job's results: the JSON response, or the stream of chunks."""

    def __init__(self, job: Job, engine: Engine) -> None:
        self.job = job
        self.engine = engine
        self.id = "cmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def _logprobs(self, tokens: list[TokenLogprob]) -> dict | None:
        if not self.job.logprobs:
            return None
        chosen = _chosen_tokens(self.engine, tokens)
        return {
            "tokens": [name for name, _, _, _ in chosen],
            "token_logprobs": [lp for _, _, lp, _ in chosen],
            "top_logprobs": [{name: lp} for name, _, lp, _ in chosen],
            "text_offset": [offset for _, _, _, offset in chosen],
        }

    def _body(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.job.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }

    @functools.cached_property
    def _frame(self) -> ChunkFrame:
        shared = self._body([])
        del shared["choices"]
        return ChunkFrame(shared, usage_null=self.job.include_usage)

    def response(self, results: list[ChoiceResult]) -> dict[str, Any]:
        body = self._body(
            [
                {
                    "index": r.index,
                    "text": self.job.echo[r.index] + r.text,
                    "logprobs": self._logprobs(r.tokens),
                    "finish_reason": r.finish_reason,
                }
                for r in results
            ]
        )
        body["usage"] = self.job.generation.usage.as_dict()
        return body

    def _chunk(self, index: int, text: str, finish_reason=None, logprobs=None) -> bytes:
        return self._frame.choice(
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        job = self.job
        for index, text in enumerate(job.echo):
            if text:
                yield self._chunk(index, text)
        async with deltas(job.generation) as stream:
            async for delta in stream:
                if delta.text:  # a delta's tokens start in its text (Delta.tokens)
                    logprobs = self._logprobs(delta.tokens)
                    yield self._chunk(delta.index, delta.text, logprobs=logprobs)
                if delta.finish_reason is not None:
                    job.finish_reasons[delta.index] = delta.finish_reason
                    yield self._chunk(delta.index, "", delta.finish_reason)
        if job.include_usage:
            yield self._frame.usage(job.generation.usage.as_dict())
