"""One error envelope everywhere: OpenAI's {"error": {message, type, param, code}}.

`APIError` is the one exception the API raises; `install_error_handlers`
replaces every Ninja default so no `{"detail": ...}` and no 422 reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from llmgateway import db
from llmgateway.triton.errors import (
    DeadlineExceeded,
    TritonError,
    TritonInferenceError,
    TritonUnavailable,
)

logger = logging.getLogger(__name__)

# Seconds a client should wait before retrying when Triton is unreachable.
UNAVAILABLE_RETRY_AFTER = 1


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> HttpResponse:
        response = HttpResponse(
            orjson.dumps(self.body()), status=self.status, content_type="application/json"
        )
        for name, value in self.headers.items():
            response[name] = value
        return response


def invalid(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def missing(param: str) -> APIError:
    return invalid(
        f"Missing required parameter: '{param}'.", param, code="missing_required_parameter"
    )


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model `{name}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def from_triton(exc: TritonError) -> APIError:
    """Map a Triton failure to what the client sees (never internal details)."""
    if isinstance(exc, TritonUnavailable):
        return APIError(
            503,
            "The inference server is unavailable. Please retry shortly.",
            type="server_error",
            code="service_unavailable",
            headers={"retry-after": str(UNAVAILABLE_RETRY_AFTER)},
        )
    if isinstance(exc, DeadlineExceeded):
        return APIError(
            504,
            "The request timed out before generation finished.",
            type="server_error",
            code="timeout",
        )
    if isinstance(exc, TritonInferenceError):
        return APIError(
            500,
            "The model failed while generating a response.",
            type="server_error",
            code="inference_error",
        )
    return APIError(500, "The server had an error processing your request.", type="server_error")


def database_unavailable() -> APIError:
    """What a request gets while the database is out of reach (llmgateway/db.py)."""
    return APIError(
        503,
        "The service is temporarily unavailable. Please retry shortly.",
        type="server_error",
        code="service_unavailable",
        headers={"retry-after": str(db.RETRY_AFTER)},
    )


# OpenAI's answer to a body that is empty or not JSON, word for word.
BODY_UNPARSEABLE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)

# What a parameter should have been, by pydantic error type, in OpenAI's words.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a decimal",
    "bool_type": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}
_ABSENT = object()


def _json_type(value: Any) -> str:
    """What was sent, in OpenAI's words ("but got a string instead")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _request_path(loc: tuple | list) -> list:
    """pydantic's ("body", "payload", "messages", 0, "role") → ["messages", 0, "role"]."""
    parts = list(loc)
    if parts and parts[0] in {"body", "query", "path"}:
        return parts[2:]
    return parts


def param_format(path: list) -> str | None:
    """["messages", 0, "role"] → "messages[0].role"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or None


def _holds(value: Any, part: Any) -> bool:
    if isinstance(value, dict):
        return isinstance(part, str) and part in value
    return isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)


def _locate(loc: tuple | list, body: Any, missing: bool) -> tuple[list, Any]:
    """The request fields an error's location passes through, and the value sent there.

    pydantic's locations also name union members ("str", "list[ContentPart]") and
    validators, which are no field of the request: following the location through
    the body tells them apart. A missing field is the last part, absent from the body.
    """
    path: list = []
    value = body
    parts = _request_path(loc)
    for position, part in enumerate(parts):
        if _holds(value, part):
            value = value[part]
        elif missing and position == len(parts) - 1:
            value = _ABSENT
        else:
            continue
        path.append(part)
    return path, value


def validation_error(errors: list[dict[str, Any]], body: Any) -> APIError:
    """pydantic's first error as OpenAI words it, `param` naming the request's field.

    `body` is the parsed request body (_ABSENT when there is none).
    """
    # A field that takes null as its default also fails as "should be None" (its null
    # branch, openai_schemas.OpenAISchema): never what a client needs to hear.
    errors = [e for e in errors if e["type"] != "none_required"]
    located = [(*_locate(e["loc"], body, e["type"] == "missing"), e) for e in errors]
    if not located:
        return invalid("Invalid request.", None)
    path, _, error = located[0]
    if not path:  # the body itself
        if body is _ABSENT:
            return invalid(BODY_UNPARSEABLE, None)
        if not isinstance(body, dict):
            return invalid(
                f"Invalid request body: expected a JSON object, but got {_json_type(body)} "
                "instead.",
                None,
            )
        return invalid(_validation_message(error, None), None)
    # A union's members fail together. One that got further into the value is the
    # one the client meant; if none did, the value suits none of them.
    same = [item for item in located if item[0][: len(path)] == path]
    path, value, error = max(same, key=lambda item: len(item[0]))
    param = param_format(path)
    if error["type"] == "missing":
        return missing(param)
    if error["type"] == "literal_error" and all(e["type"] == "literal_error" for *_, e in same):
        return _unsupported_value(value, error["ctx"]["expected"], param)
    expected = list(dict.fromkeys(_EXPECTED.get(e["type"], "") for p, _, e in same if p == path))
    if all(expected):
        wanted = expected[0] if len(expected) == 1 else "one of " + " or ".join(expected)
        return invalid(
            f"Invalid type for '{param}': expected {wanted}, but got {_json_type(value)} instead.",
            param,
            code="invalid_type",
        )
    return invalid(_validation_message(error, param), param)


def _unsupported_value(value: Any, expected: str, param: str | None) -> APIError:
    """OpenAI's "Invalid value: 'x'. Supported values are: 'a', 'b', and 'c'." from
    pydantic's list of a Literal's values ("'a', 'b' or 'c'")."""
    head, _, last = expected.rpartition(" or ")
    values = f"{head}, and {last}" if "," in head else f"{head} and {last}" if head else last
    shown = f"'{value}'" if isinstance(value, str) else orjson.dumps(value).decode()
    return invalid(
        f"Invalid value: {shown}. Supported values are: {values}.", param, code="invalid_value"
    )


def _validation_message(error: dict[str, Any], param: str | None) -> str:
    msg = str(error.get("msg", "Invalid value"))
    msg = msg.removeprefix("Value error, ")
    return f"Invalid value for '{param}': {msg}" if param else msg


def _body_parsed(request: HttpRequest) -> Any:
    """The request's JSON body again (only on the error path), or _ABSENT."""
    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return _ABSENT


def install_error_handlers(api: NinjaAPI) -> None:
    def handle_api_error(request: HttpRequest, exc: APIError) -> HttpResponse:
        return exc.response()

    def handle_validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        return validation_error(exc.errors, _body_parsed(request)).response()

    def handle_auth(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return APIError(
            401,
            "Incorrect API key provided."
            if request.headers.get("authorization")
            else "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        ).response()

    def handle_http(request: HttpRequest, exc: HttpError) -> HttpResponse:
        if isinstance(exc.__cause__, APIError):  # the parser's own error, which Ninja wraps
            return exc.__cause__.response()
        if exc.status_code == 400:
            return invalid(BODY_UNPARSEABLE, None).response()
        return APIError(exc.status_code, str(exc)).response()

    def handle_404(request: HttpRequest, exc: Exception) -> HttpResponse:
        return not_found_response(request)

    def handle_too_big(request: HttpRequest, exc: Exception) -> HttpResponse:
        return too_large().response()

    def handle_triton(request: HttpRequest, exc: TritonError) -> HttpResponse:
        return from_triton(exc).response()

    def handle_database(request: HttpRequest, exc: Exception) -> HttpResponse:
        if not isinstance(exc, db.DatabaseUnavailable):  # those are logged once per outage
            logger.warning("database error on %s %s: %s", request.method, request.path, exc)
        return database_unavailable().response()

    def handle_other(request: HttpRequest, exc: Exception) -> HttpResponse:
        if isinstance(exc, RecursionError):
            # Only a request's own nesting goes this deep: its free-form JSON values
            # (schemas, tool parameters) are the only unbounded structures it walks.
            return invalid("The request nests too deeply.", None).response()
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return APIError(
            500, "The server had an error processing your request.", type="server_error"
        ).response()

    api.add_exception_handler(Exception, handle_other)
    api.add_exception_handler(APIError, handle_api_error)
    api.add_exception_handler(ValidationError, handle_validation)
    api.add_exception_handler(AuthenticationError, handle_auth)
    api.add_exception_handler(HttpError, handle_http)
    api.add_exception_handler(Http404, handle_404)
    api.add_exception_handler(RequestDataTooBig, handle_too_big)
    api.add_exception_handler(TritonError, handle_triton)
    # The database out of reach or not answering in time; other database errors are 500s.
    api.add_exception_handler(OperationalError, handle_database)
    api.add_exception_handler(InterfaceError, handle_database)


def too_large() -> APIError:
    return APIError(413, "The request body is too large.", code="request_too_large")


def not_found_response(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return APIError(
        404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"
    ).response()


def method_not_allowed_response(request: HttpRequest) -> HttpResponse:
    return APIError(
        405,
        f"Method {request.method} is not allowed for {request.path}.",
        code="method_not_allowed",
    ).response()


def server_error_response(request: HttpRequest) -> HttpResponse:
    return APIError(
        500, "The server had an error processing your request.", type="server_error"
    ).response()
