"""Chat messages as the prompt takes them: checked as OpenAI checks them, normalised to
plain role/content dicts, and with control tokens in what a client wrote quoted."""

from __future__ import annotations

from typing import Any

from llmgateway.api.openai_schemas import ContentPart, FunctionCall, Message, OpenAISchema
from llmgateway.errors import APIError, invalid, missing
from llmgateway.textgen.tokenizer import TextModel
from llmgateway.textgen.tools.messages import legacy_messages_convert


def message_chars(message: Message) -> int:
    """Characters of what the client wrote in `message` that the prompt will hold
    (content, text and refusal parts, tool-call arguments): a lower bound, cheaply."""
    content = message.content
    if isinstance(content, str):
        chars = len(content)
    elif content:
        chars = sum(len(part.text or part.refusal or "") for part in content)
    else:
        chars = 0
    for call in message.tool_calls or ():
        chars += len(call.function.arguments)
    if message.function_call is not None:
        chars += len(message.function_call.arguments)
    return chars


def _content_text(message: Message, index: int) -> str | None:
    content = message.content
    if content is None or isinstance(content, str):
        return content
    return "\n".join(
        _part_text(part, message.role, f"messages[{index}].content[{position}]")
        for position, part in enumerate(content)
    )


def _part_text(part: ContentPart, role: str, param: str) -> str:
    """A text part's text; an assistant's refusal part reads as what the assistant said."""
    if part.type == "text":
        field, value = "text", part.text
    elif part.type == "refusal" and role == "assistant":
        field, value = "refusal", part.refusal
    elif part.type == "refusal":
        raise invalid("Content parts of type 'refusal' are only for assistant messages.", param)
    else:
        raise invalid(
            f"Content parts of type {part.type!r} are not supported by this model; "
            "send text parts.",
            param,
        )
    if value is None:
        raise missing(f"{param}.{field}")
    return value


# OpenAI's messages, spelling kept. Its checks of the message sequence name the
# message as "messages.[i].role", unlike its schema errors' "messages[i].role".
TOOL_WITHOUT_CALL = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
    "message with 'tool_calls'."
)
TOOL_CALLS_UNANSWERED = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding "
    "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
)


def _unanswered(index: int, ids: dict[str, None]) -> APIError:
    return invalid(TOOL_CALLS_UNANSWERED + ", ".join(ids), f"messages.[{index}].role")


def messages_normalize(messages: list[Message]) -> list[dict[str, Any]]:
    """OpenAI messages as plain dicts with string content, legacy function turns as tools.

    Checks what OpenAI checks of each role: `tool` messages carry a `tool_call_id` of
    the assistant message with `tool_calls` they follow (directly or after other
    answers to it), every one of its calls is answered before the next other message,
    and `function` messages carry a `name`.
    """
    out = []
    asked: dict[str, None] = {}  # the ids of the tool calls the messages so far answer
    unanswered: dict[str, None] = {}
    asked_at = 0
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if role == "tool":
            call_id = message.tool_call_id
            if call_id is None:
                raise missing(f"messages[{index}].tool_call_id")
            if not asked:
                raise invalid(TOOL_WITHOUT_CALL, f"messages.[{index}].role")
            if call_id not in asked:
                raise invalid(
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    f"messages.[{index}].tool_call_id",
                )
            unanswered.pop(call_id, None)
        else:
            if unanswered:
                raise _unanswered(asked_at, unanswered)
            asked = {}
            if role == "assistant" and message.tool_calls:
                asked = dict.fromkeys(call.id for call in message.tool_calls)
            unanswered, asked_at = dict(asked), index
            if role == "function" and message.name is None:
                raise missing(f"messages[{index}].name")
        content = _content_text(message, index)
        calls = message.tool_calls or message.function_call
        if content is None and (role in ("system", "user") or (role == "assistant" and not calls)):
            raise invalid(
                f"messages[{index}] of role {role!r} needs content.", f"messages[{index}]"
            )
        item: dict[str, Any] = {"role": role, "content": content}
        if message.tool_calls:
            item["tool_calls"] = [c.model_dump(exclude_none=True) for c in message.tool_calls]
        if message.function_call is not None:
            item["function_call"] = message.function_call.model_dump()
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    if unanswered:
        raise _unanswered(asked_at, unanswered)
    return legacy_messages_convert(out)


def _field_quoted(model: OpenAISchema, field: str, text: TextModel) -> OpenAISchema:
    """`model` with its string `field` quoted: itself when there was nothing to quote."""
    value = getattr(model, field)
    quoted = text.quote(value) if value else value
    return model if quoted is value else model.model_copy(update={field: quoted})


def _call_quoted(call: FunctionCall, text: TextModel) -> FunctionCall:
    return _field_quoted(_field_quoted(call, "name", text), "arguments", text)


def messages_quote(messages: list[Message], text: TextModel) -> list[Message]:
    """The messages with control tokens in their text quoted (TextModel.quote): what a
    client sends as content or as a tool call's name and arguments is encoded as
    text, never as <|im_start|> and the like. (A model's earlier answer can carry
    such text back: the arguments it wrote come back in the next request.)"""
    out = []
    for message in messages:
        update: dict[str, Any] = {}
        if isinstance(message.content, str):
            message = _field_quoted(message, "content", text)
        elif message.content:
            parts = [
                _field_quoted(_field_quoted(part, "text", text), "refusal", text)
                for part in message.content
            ]
            if any(new is not old for new, old in zip(parts, message.content, strict=True)):
                update["content"] = parts
        if message.tool_calls:
            calls = [
                c.model_copy(update={"function": f})
                if (f := _call_quoted(c.function, text)) is not c.function
                else c
                for c in message.tool_calls
            ]
            if any(new is not old for new, old in zip(calls, message.tool_calls, strict=True)):
                update["tool_calls"] = calls
        if message.function_call is not None:
            call = _call_quoted(message.function_call, text)
            if call is not message.function_call:
                update["function_call"] = call
        out.append(message.model_copy(update=update) if update else message)
    return out
