"""Responses tools: flat function tools and `tool_choice`, checked and put in chat's
nested form; every hosted tool (web_search, file_search, ...) refused by name."""

from __future__ import annotations

import re
from typing import Any

from llmgateway.api.responses_schemas import ResponseCreateIn
from llmgateway.errors import invalid, missing

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
CHOICES = ("none", "auto", "required")


def hosted(kind: Any, model: str, param: str):
    return invalid(f"Hosted tool '{kind}' is not supported with {model}.", param)


def _function(tool: Any, index: int, model: str) -> dict[str, Any]:
    param = f"tools[{index}]"
    if not isinstance(tool, dict):
        raise invalid(f"Invalid type for '{param}': expected an object.", param)
    kind = tool.get("type")
    if kind is None:
        raise missing(f"{param}.type")
    if kind != "function":
        raise hosted(kind, model, "tools")
    name = tool.get("name")
    if name is None:
        raise missing(f"{param}.name")
    if not isinstance(name, str) or not NAME.match(name):
        raise invalid(
            f"Invalid '{param}.name': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'.",
            f"{param}.name",
            "invalid_value",
        )
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid(f"Invalid type for '{param}.parameters': expected an object.", param)
    function: dict[str, Any] = {"name": name, "parameters": parameters}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    # Responses treats a function without `strict` as strict.
    function["strict"] = tool.get("strict") is not False
    return function


def _allowed(choice: dict[str, Any]) -> set[str]:
    names = set()
    for index, tool in enumerate(choice.get("tools") or []):
        if not isinstance(tool, dict) or tool.get("type") != "function" or "name" not in tool:
            raise invalid(
                "Only function tools can be allowed on this server.",
                f"tool_choice.tools[{index}]",
            )
        names.add(tool["name"])
    return names


def tools_check(payload: ResponseCreateIn) -> list[dict[str, Any]]:
    """The request's function tools (chat's FunctionDef fields), the ones `tool_choice`
    allows when it is `allowed_tools`; a 400 naming any hosted tool."""
    functions = [_function(t, i, payload.model) for i, t in enumerate(payload.tools or [])]
    choice = payload.tool_choice
    names = {f["name"] for f in functions}
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            if choice.get("name") not in names:
                raise invalid(
                    f"Tool choice '{choice.get('name')}' not found in 'tools' parameter.",
                    "tool_choice",
                )
        elif kind == "allowed_tools":
            if choice.get("mode", "auto") not in ("auto", "required"):
                raise invalid("tool_choice.mode must be 'auto' or 'required'.", "tool_choice.mode")
            allowed = _allowed(choice)
            functions = [f for f in functions if f["name"] in allowed]
        else:
            raise hosted(kind, payload.model, "tool_choice")
    elif choice is not None and choice not in CHOICES:
        raise invalid(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto' and 'required'.",
            "tool_choice",
            "invalid_value",
        )
    if choice == "required" and not functions:
        raise invalid(
            "Tool choice 'required' must be specified with 'tools' parameter.", "tool_choice"
        )
    return functions


def tool_choice_chat(choice: Any) -> Any:
    """`tool_choice` in chat's form (checked by tools_check)."""
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            return {"type": "function", "function": {"name": choice["name"]}}
        return choice.get("mode", "auto")
    return choice
