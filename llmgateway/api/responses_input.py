"""Responses `input` items: checked as OpenAI checks them, kept in their stored form
(with ids, for input_items and later turns), and turned into chat messages, so the
prompt is rendered by chat's machinery (chat_messages.py, the tool formats, vision).
"""

from __future__ import annotations

import secrets
from typing import Any

from llmgateway.errors import APIError, invalid, missing

USER_PARTS = ("input_text", "input_image", "input_file")
ASSISTANT_PARTS = ("output_text", "refusal")
ROLES = ("user", "assistant", "system", "developer")
# Item types of hosted tools: a conversation this gateway produced has none of them.
KNOWN_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _values(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return ", ".join(quoted)


def invalid_value(value: Any, allowed: tuple[str, ...], param: str) -> APIError:
    return invalid(
        f"Invalid value: '{value}'. Supported values are: {_values(allowed)}.",
        param,
        "invalid_value",
    )


def _text(item: dict[str, Any], field: str, param: str) -> str:
    value = item.get(field)
    if value is None:
        raise missing(f"{param}.{field}")
    if not isinstance(value, str):
        raise invalid(f"Invalid type for '{param}.{field}': expected a string.", f"{param}.{field}")
    return value


def _part(part: Any, role: str, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise invalid(f"Invalid type for '{param}': expected an object.", param)
    kind = part.get("type")
    allowed = ASSISTANT_PARTS if role == "assistant" else USER_PARTS
    if kind not in allowed:
        raise invalid_value(kind, allowed, f"{param}.type")
    if kind == "input_text":
        return {"type": "input_text", "text": _text(part, "text", param)}
    if kind == "output_text":
        return {
            "type": "output_text",
            "text": _text(part, "text", param),
            "annotations": part.get("annotations") or [],
        }
    if kind == "refusal":
        return {"type": "refusal", "refusal": _text(part, "refusal", param)}
    if kind == "input_file" or part.get("file_id"):
        raise invalid(
            "File inputs (input_file parts and file_id) are not supported by this server: "
            "it has no Files API. Send images as an image_url (https or data URI).",
            f"{param}.type",
            "invalid_value",
        )
    detail = part.get("detail") or "auto"
    return {"type": "input_image", "image_url": _text(part, "image_url", param), "detail": detail}


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role is None:
        raise missing(f"{param}.role")
    if role not in ROLES:
        raise invalid_value(role, ROLES, f"{param}.role")
    content = item.get("content")
    if content is None:
        raise missing(f"{param}.content")
    if isinstance(content, str):
        kind = "output_text" if role == "assistant" else "input_text"
        parts = [_part({"type": kind, "text": content}, role, f"{param}.content")]
    elif isinstance(content, list):
        parts = [_part(p, role, f"{param}.content[{i}]") for i, p in enumerate(content)]
    else:
        raise invalid(
            f"Invalid type for '{param}.content': expected a string or an array.",
            f"{param}.content",
        )
    return {
        "id": item.get("id") or new_id("msg"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": parts,
    }


def _call_output(item: dict[str, Any], param: str) -> dict[str, Any]:
    output = item.get("output")
    if output is None:
        raise missing(f"{param}.output")
    if isinstance(output, list):
        parts = [_part(p, "user", f"{param}.output[{i}]") for i, p in enumerate(output)]
        if any(p["type"] != "input_text" for p in parts):
            raise invalid(
                "Only text parts are supported in a function_call_output by this server.",
                f"{param}.output",
            )
        output = "\n".join(p["text"] for p in parts)
    elif not isinstance(output, str):
        raise invalid(
            f"Invalid type for '{param}.output': expected a string or an array.",
            f"{param}.output",
        )
    return {
        "id": item.get("id") or new_id("fco"),
        "type": "function_call_output",
        "call_id": _text(item, "call_id", param),
        "output": output,
        "status": "completed",
    }


def item_normalize(item: Any, index: int, earlier: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One input item in its stored form. `earlier` holds the conversation's items so far
    by id, for item references."""
    param = f"input[{index}]"
    if not isinstance(item, dict):
        raise invalid(f"Invalid type for '{param}': expected an object.", param)
    kind = item.get("type")
    if kind is None:
        kind = "message" if "role" in item else "item_reference"
    if kind not in KNOWN_TYPES:
        raise invalid_value(kind, KNOWN_TYPES, f"{param}.type")
    if kind == "message":
        return _message(item, param)
    if kind == "function_call":
        return {
            "id": item.get("id") or new_id("fc"),
            "type": "function_call",
            "call_id": _text(item, "call_id", param),
            "name": _text(item, "name", param),
            "arguments": _text(item, "arguments", param),
            "status": "completed",
        }
    if kind == "function_call_output":
        return _call_output(item, param)
    if kind == "reasoning":
        # Kept for input_items; past reasoning is not shown to the model (as the
        # reasoning models' own templates drop it from earlier turns).
        return {
            "id": item.get("id") or new_id("rs"),
            "type": "reasoning",
            "summary": item.get("summary") or [],
            "content": item.get("content") or [],
            "status": "completed",
        }
    ref = _text(item, "id", param)
    if ref not in earlier:
        raise APIError(
            404,
            f"Item with id '{ref}' not found. Items are not persisted when `store` is set to "
            "false. Try again with `store` set to true, or remove this item from your input.",
            param=param,
        )
    return earlier[ref]


def input_normalize(value: str | list[Any], earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's `input` as stored items (a string is one user message)."""
    if isinstance(value, str):
        return [_message({"role": "user", "content": value}, "input")]
    by_id = {item["id"]: item for item in earlier if "id" in item}
    items = []
    for index, item in enumerate(value):
        normalized = item_normalize(item, index, by_id)
        by_id[normalized["id"]] = normalized
        items.append(normalized)
    return items


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind == "refusal":
        return {"type": "refusal", "refusal": part["refusal"]}
    if kind == "input_image":
        return {
            "type": "image_url",
            "image_url": {"url": part["image_url"], "detail": part["detail"]},
        }
    return {"type": "text", "text": part["text"]}


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """The conversation as chat messages: calls join the assistant turn they follow,
    call outputs become tool messages, reasoning is left out."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    called: set[str] = set()
    for item in items:
        kind = item["type"]
        if kind == "message":
            parts = [_chat_part(p) for p in item["content"]]
            texts = [p for p in parts if p["type"] == "text"]
            content: Any = parts
            if len(texts) == len(parts):  # text only: one string, as chat takes it best
                content = "\n".join(p["text"] for p in texts)
            messages.append({"role": item["role"], "content": content})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            called.add(item["call_id"])
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_call_id" not in last:
                last.setdefault("tool_calls", []).append(call)
                if last.get("content") == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if item["call_id"] not in called:
                raise invalid(
                    f"No tool call found for function call output with call_id {item['call_id']}.",
                    "input",
                )
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    return messages
