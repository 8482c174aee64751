"""OpenAI's legacy function messages, as the tool formats take them."""

from __future__ import annotations

from typing import Any

from llmgateway.textgen.tools.parsing import new_call_id


def legacy_messages_convert(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`function_call` on assistant turns and `role: function` results, as tool calls."""
    out: list[dict[str, Any]] = []
    last_id = None
    for message in messages:
        if message["role"] == "assistant" and message.get("function_call"):
            last_id = new_call_id()
            call = {"id": last_id, "type": "function", "function": message["function_call"]}
            out.append({**message, "tool_calls": [call]})
        elif message["role"] == "function":
            out.append({"role": "tool", "tool_call_id": last_id, "content": message["content"]})
        else:
            out.append(message)
    return out
