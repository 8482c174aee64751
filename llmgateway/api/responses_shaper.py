"""The Responses API's answer: the `response` object, or its stream of typed events
(`response.created` … `response.completed`), exactly as OpenAI sends them.

One `OutputBuilder` turns the answer's pieces (reasoning, text, tool-call deltas) into
output items and their events, for the stream and, fed the whole answer at once, for
the non-streamed response: the two always agree.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmgateway.api.chat_shaper import split_delta, split_whole
from llmgateway.api.openai_common import chosen_tokens
from llmgateway.api.responses_input import new_id
from llmgateway.api.sse import head_first
from llmgateway.engine import BatchGeneration, Engine, Generation, TokenLogprob
from llmgateway.errors import APIError
from llmgateway.runner.endpoint import ChoiceResult, deltas
from llmgateway.textgen.reasoning import ReasoningFormat
from llmgateway.textgen.tools import parser_for
from llmgateway.textgen.tools.parsing import Event, ToolCallDelta
from llmgateway.textgen.tools.plan import ToolPlan


class OutputBuilder:
    """Output items built piece by piece, with the events that announce them.

    Items open as their first piece arrives and close when another kind begins or
    the answer ends. Whitespace alone does not open a message (what a model writes
    between its reasoning and a call); an answer with no message and no call still
    gets one message, so `output_text` always has an item to live in.
    """

    def __init__(self, *, summary: bool) -> None:
        self.summary = summary
        self.items: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._text: list[str] = []
        self._space = ""
        self.incomplete = False
        # include message.output_text.logprobs: the entries of text not sent yet (they go
        # with the next text delta; a call's are dropped), and the open message's.
        self.logprobs: list[dict[str, Any]] = []
        self._message_logprobs: list[dict[str, Any]] = []

    def _emit(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, **fields})

    def _start(self, item: dict[str, Any]) -> None:
        self.close()
        self.items.append(item)
        self._open, self._text = item, []
        self._emit("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))

    def _scope(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.items) - 1}

    def reasoning(self, text: str) -> None:
        if not text:
            return
        if self._open is None or self._open["type"] != "reasoning":
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            item["status"] = "in_progress"
            self._start(item)
            part = {"type": "reasoning_text", "text": ""}
            self._emit("response.content_part.added", **self._scope(), content_index=0, part=part)
        self._text.append(text)
        self._emit("response.reasoning_text.delta", **self._scope(), content_index=0, delta=text)

    def text(self, text: str) -> None:
        if not text:
            return
        if self._open is None or self._open["type"] != "message":
            if not text.strip():
                self._space += text
                return
            self._start_message()
        self._append(self._space + text)
        self._space = ""

    def _append(self, text: str) -> None:
        self._text.append(text)
        entries, self.logprobs = self.logprobs, []
        self._message_logprobs += entries
        self._emit(
            "response.output_text.delta",
            **self._scope(),
            content_index=0,
            delta=text,
            logprobs=entries,
        )

    def _start_message(self) -> None:
        item = {
            "id": new_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self._start(item)
        self._message_logprobs = []
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._emit("response.content_part.added", **self._scope(), content_index=0, part=part)

    def call(self, delta: ToolCallDelta) -> None:
        self.logprobs = []  # a call's tokens have no place in OpenAI's shape
        if delta.id is not None or self._open is None or self._open["type"] != "function_call":
            self._start(
                {
                    "id": new_id("fc"),
                    "type": "function_call",
                    "status": "in_progress",
                    "arguments": "",
                    "call_id": delta.id,
                    "name": delta.name,
                }
            )
        if delta.arguments:
            self._text.append(delta.arguments)
            self._emit(
                "response.function_call_arguments.delta", **self._scope(), delta=delta.arguments
            )

    def event(self, item: Event) -> None:
        if isinstance(item, str):
            self.text(item)
        else:
            self.call(item)

    def close(self) -> None:
        item = self._open
        if item is None:
            return
        scope = self._scope()
        text = "".join(self._text)
        kind = item["type"]
        if kind == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            self._emit("response.reasoning_text.done", **scope, content_index=0, text=text)
            self._emit("response.content_part.done", **scope, content_index=0, part=part)
            item["content"] = [part]
            if self.summary:
                self._summarise(scope, text)
                item["summary"] = [{"type": "summary_text", "text": text}]
            item["status"] = "completed"
        elif kind == "message":
            if self.logprobs:  # what the end of the answer held back
                self._message_logprobs += self.logprobs
                self.logprobs = []
            entries = self._message_logprobs
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": entries}
            self._emit(
                "response.output_text.done", **scope, content_index=0, text=text, logprobs=entries
            )
            self._emit("response.content_part.done", **scope, content_index=0, part=part)
            item["content"] = [part]
            item["status"] = "incomplete" if self.incomplete else "completed"
        else:
            item["arguments"] = text
            self._emit(
                "response.function_call_arguments.done", **scope, arguments=text, name=item["name"]
            )
            item["status"] = "completed"
        self._emit("response.output_item.done", output_index=scope["output_index"], item=item)
        self._open = None

    def _summarise(self, scope: dict[str, Any], text: str) -> None:
        """The summary asked for (`reasoning.summary`): the reasoning itself, as this
        gateway has no summariser; streamed as OpenAI streams summaries."""
        empty = {"type": "summary_text", "text": ""}
        self._emit("response.reasoning_summary_part.added", **scope, summary_index=0, part=empty)
        self._emit("response.reasoning_summary_text.delta", **scope, summary_index=0, delta=text)
        self._emit("response.reasoning_summary_text.done", **scope, summary_index=0, text=text)
        part = {"type": "summary_text", "text": text}
        self._emit("response.reasoning_summary_part.done", **scope, summary_index=0, part=part)

    def finish(self, *, incomplete: bool) -> None:
        self.incomplete = incomplete
        if not any(i["type"] in ("message", "function_call") for i in self.items):
            if self._open is None or self._open["type"] != "message":
                self._start_message()
            if self._space:
                self._append(self._space)
                self._space = ""
        self.close()


class ResponsesShaper:
    """Shapes one Responses request's answer. `template` holds the Response object's
    fields echoed from the request; the rest (id, status, output, usage) is the answer's."""

    def __init__(
        self,
        *,
        generation: Generation | BatchGeneration,
        template: dict[str, Any],
        plan: ToolPlan | None,
        continues_thought: bool,
        reasoning: ReasoningFormat | None,
        summary: bool,
        engine: Engine | None = None,
        logprobs: bool = False,
    ) -> None:
        self.generation = generation
        self.engine = engine
        self.logprobs = logprobs
        self.template = template
        self.plan = plan
        self.continues_thought = continues_thought
        self.reasoning = reasoning if reasoning is not None and reasoning.reasons else None
        self.builder = OutputBuilder(summary=summary)
        self.finish_reasons: dict[int, str] = {}
        self.id = new_id("resp")
        self.created = int(time.time())
        self._sequence = 0
        # The Response as it ended (completed or incomplete), for the store.
        self.final: dict[str, Any] | None = None

    # ---- the Response object ---------------------------------------------------------------

    def snapshot(
        self,
        status: str,
        *,
        output: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = int(time.time())
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": now if status == "completed" else None,
            "background": False,
            "error": error,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
        }
        body.update(self.template)
        body["output"] = output or []
        body["usage"] = usage
        return body

    def _usage(self) -> dict[str, Any]:
        usage = self.generation.usage
        return {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
            "total_tokens": usage.total_tokens,
        }

    def _ended(self, engine_reason: str | None, called: bool) -> dict[str, Any]:
        reason = engine_reason
        if self.plan is not None:
            reason = self.plan.finish_reason(engine_reason, called)
        self.finish_reasons[0] = reason or "stop"
        self.builder.finish(incomplete=engine_reason == "length")
        status = "incomplete" if engine_reason == "length" else "completed"
        self.final = self.snapshot(status, output=self.builder.items, usage=self._usage())
        return self.final

    def _entries(self, tokens: list[TokenLogprob]) -> list[dict[str, Any]]:
        """Logprob entries as the Responses API writes them (chosen tokens only)."""
        if not self.logprobs or not tokens:
            return []
        return [
            {"token": name, "bytes": list(raw), "logprob": lp, "top_logprobs": []}
            for name, raw, lp, _ in chosen_tokens(self.engine, tokens)
        ]

    # ---- collected -------------------------------------------------------------------------

    def response(self, results: list[ChoiceResult]) -> dict[str, Any]:
        (result,) = results
        text = result.text
        builder = self.builder
        builder.logprobs = self._entries(result.tokens)
        if self.reasoning is not None:
            reasoning, text = split_whole(self.reasoning, text)
            builder.reasoning(reasoning)
        parser = (
            parser_for(self.plan, continues_thought=self.continues_thought) if self.plan else None
        )
        called = False
        if parser is None:
            builder.text(text)
        else:
            for item in [*parser.feed(text), *parser.finish()]:
                called |= not isinstance(item, str)
                builder.event(item)
        return self._ended(result.finish_reason, called)

    # ---- streamed --------------------------------------------------------------------------

    def _frame(self, event: dict[str, Any]) -> bytes:
        event["sequence_number"] = self._sequence
        self._sequence += 1
        kind = event["type"].encode()
        return b"event: " + kind + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def _drain(self) -> bytes:
        events, self.builder.events = self.builder.events, []
        return b"".join(self._frame(e) for e in events)

    async def chunks(self) -> AsyncIterator[bytes]:
        """created and in_progress, then the items' events, then the terminal event.

        The first two go out with the first content event, in one write (as chat's
        role chunks do), rather than in their own while Triton computes.
        """
        started = self.snapshot("in_progress")
        head = self._frame({"type": "response.created", "response": started})
        head += self._frame({"type": "response.in_progress", "response": started})
        async with contextlib.aclosing(head_first(head, self._item_events())) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _item_events(self) -> AsyncIterator[bytes]:
        builder = self.builder
        splitter = self.reasoning.splitter() if self.reasoning is not None else None
        parser = (
            parser_for(self.plan, continues_thought=self.continues_thought) if self.plan else None
        )
        called = False
        async with deltas(self.generation) as stream:
            async for delta in stream:
                if self.logprobs:
                    builder.logprobs += self._entries(delta.tokens)
                if splitter is not None:
                    reasoning, text = split_delta(splitter, delta)
                    builder.reasoning(reasoning)
                else:
                    text = delta.text
                if parser is None:
                    builder.text(text)
                else:
                    events = parser.feed(text) if text else []
                    if delta.finish_reason is not None:
                        events += parser.finish()
                    for item in events:
                        called |= not isinstance(item, str)
                        builder.event(item)
                if delta.finish_reason is not None:
                    final = self._ended(delta.finish_reason, called)
                    kind = (
                        "response.incomplete"
                        if final["status"] == "incomplete"
                        else "response.completed"
                    )
                    yield self._drain() + self._frame({"type": kind, "response": final})
                    return
                if builder.events:
                    yield self._drain()

    def failed(self, error: APIError) -> bytes:
        """`response.failed` with the items so far: generation broke after the start."""
        detail = {"code": "server_error", "message": error.message}
        body = self.snapshot("failed", output=self.builder.items, error=detail)
        return self._frame({"type": "response.failed", "response": body})
