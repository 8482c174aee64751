"""POST /v1/chat/completions: the request checked and prepared for the runner.

Wire format as OpenAI sends it (docs/openai-compat.md lists every choice made here).
The messages become the prompt in chat_messages.py, tools and structured outputs
become a tool plan and a guide in chat_tools.py, and chat_shaper.py shapes the answer.
"""

from __future__ import annotations

import dataclasses

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Router

from llmgateway.api.caps import cap
from llmgateway.api.chat_messages import message_chars, messages_normalize, messages_quote
from llmgateway.api.chat_shaper import ChatShaper
from llmgateway.api.chat_tools import (
    call_guide,
    guide_check,
    response_format_validate,
    response_guide,
    tool_plan_build,
)
from llmgateway.api.openai_common import log_ignored, params_build, sampling_validate
from llmgateway.api.openai_schemas import ChatCompletionIn, NamedFunction, NamedToolChoice
from llmgateway.api.respond import respond
from llmgateway.engine import GenerationRequest
from llmgateway.errors import invalid
from llmgateway.limits import deadline_resolve, max_tokens_resolve, prompt_chars_check
from llmgateway.runner.endpoint import Endpoint, Prepared, Target
from llmgateway.textgen.reasoning import reasoning_format
from llmgateway.textgen.tools import prompt_render, tool_stops
from llmgateway.textgen.tools.plan import ToolPlan
from llmgateway.vision.service import vision_chat_plan

router = Router(tags=["openai"])


def chat_validate(payload: ChatCompletionIn) -> None:
    cap("messages", payload.messages, settings.GATEWAY_MAX_MESSAGES)
    cap("tools", payload.tools, settings.GATEWAY_MAX_TOOLS)
    cap("functions", payload.functions, settings.GATEWAY_MAX_TOOLS)
    sampling_validate(payload)
    if payload.top_logprobs:
        if not payload.logprobs:
            raise invalid("top_logprobs requires logprobs to be true.", "top_logprobs")
        raise invalid(
            "top_logprobs is not supported: TensorRT-LLM returns only the chosen token's "
            "logprob. Use logprobs=true with top_logprobs 0 or unset.",
            "top_logprobs",
        )
    response_format_validate(payload)
    if payload.tools and payload.functions:
        raise invalid("Send either tools or functions, not both.", "functions")
    choice = payload.tool_choice
    if (choice == "required" or isinstance(choice, NamedToolChoice)) and not payload.tools:
        raise invalid("tool_choice requires tools to be given.", "tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {
        t.function.name for t in payload.tools or []
    }:
        raise invalid(
            f"tool_choice names the function {choice.function.name!r}, which is not in tools.",
            "tool_choice",
        )
    legacy = payload.function_call
    if isinstance(legacy, NamedFunction) and legacy.name not in {
        f.name for f in payload.functions or []
    }:
        raise invalid(
            f"function_call names the function {legacy.name!r}, which is not in functions.",
            "function_call",
        )


class ChatEndpoint(Endpoint):
    route = "/v1/chat/completions"
    prompt_param = "messages"

    payload: ChatCompletionIn
    # Whether decoding is guided (check), and the tools' plan (prepare).
    guided = False
    plan: ToolPlan | None = None
    continues_thought = False

    def prompt_lengths(self) -> list[int]:
        return [sum(map(message_chars, self.payload.messages))]

    async def check(self, target: Target) -> None:
        self.guided = await guide_check(self.payload, target.config, target.engine)

    def prepare(self, target: Target, request_id: str) -> Prepared:
        payload, config, engine = self.payload, target.config, target.engine
        plan = tool_plan_build(payload, config, engine.text)
        guide = response_guide(payload)
        if self.guided and plan.forced:
            call = call_guide(payload, plan)
            if call is not None:
                plan, guide = dataclasses.replace(plan, guided=True), call
        quoted = messages_quote(payload.messages, engine.text)
        vision = vision_chat_plan(config=config, engine=engine, messages=quoted)
        messages = messages_normalize(vision.messages if vision else quoted)
        try:
            rendered = prompt_render(engine.text, messages, plan)
        except Exception as exc:  # jinja's TemplateError, a template that expects other fields
            raise invalid(
                f"The messages could not be rendered for this model: {exc}", "messages"
            ) from exc
        # The tools' definitions are in it too, and whatever else the format renders.
        prompt_chars_check(
            config=config, text=engine.text, chars=len(rendered.prompt), param="messages"
        )
        vision_prompt = vision.finish(rendered.prompt) if vision else None
        prompt_ids = (
            vision_prompt.prompt_ids if vision_prompt else engine.text.encode(rendered.prompt)
        )
        requested, param = payload.max_completion_tokens, "max_completion_tokens"
        if requested is None:
            requested, param = payload.max_tokens, "max_tokens"
        max_tokens = max_tokens_resolve(
            config=config, requested=requested, prompt_tokens=len(prompt_ids), param=param
        )
        params = params_build(
            payload,
            config=config,
            max_tokens=max_tokens,
            extra_stops=tool_stops(plan),
            logprobs=bool(payload.logprobs),
            guide=guide,
            reasoning=config.reasoning_tags,
        )
        gen_request = GenerationRequest(
            prompt_ids=prompt_ids,
            params=params,
            request_id=request_id,
            deadline=deadline_resolve(None),
            n=payload.n,
            stream=self.stream,
        )
        self.plan = plan if plan.active else None
        self.continues_thought = rendered.continues_thought
        return Prepared(engine.generate(gen_request), [gen_request], vision_prompt)

    def shaper(self, target: Target, prepared: Prepared) -> ChatShaper:
        options = self.payload.stream_options
        return ChatShaper(
            generation=prepared.generation,
            model=target.config.name,
            engine=target.engine,
            include_usage=bool(options and options.include_usage),
            logprobs=bool(self.payload.logprobs),
            plan=self.plan,
            continues_thought=self.continues_thought,
            reasoning=reasoning_format(target.config.reasoning_format),
        )


@router.post("/chat/completions")
async def chat_completions(request: HttpRequest, payload: ChatCompletionIn) -> HttpResponse:
    log_ignored(payload, ChatEndpoint.route)
    chat_validate(payload)
    return await respond(request, ChatEndpoint(payload))
