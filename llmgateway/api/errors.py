"""One error envelope everywhere: OpenAI's {"error": {message, type, param, code}}.

`APIError` is the one exception the API raises; `install_error_handlers`
replaces every Ninja default so no `{"detail": ...}` and no 422 reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

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


def param_from_loc(loc: tuple | list) -> str | None:
    """pydantic's ("body", "payload", "messages", 0, "role") → "messages[0].role"."""
    parts = list(loc)
    if parts and parts[0] in {"body", "query", "path"}:
        parts = parts[2:] if len(parts) > 1 else []
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "tagged-union")):
            out += ("." if out else "") + str(part)
    return out or None


def _validation_message(error: dict[str, Any], param: str | None) -> str:
    msg = str(error.get("msg", "Invalid value"))
    msg = msg.removeprefix("Value error, ")
    return f"Invalid value for '{param}': {msg}" if param else msg


def install_error_handlers(api: NinjaAPI) -> None:
    def handle_api_error(request: HttpRequest, exc: APIError) -> HttpResponse:
        return exc.response()

    def handle_validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        error = exc.errors[0] if exc.errors else {}
        param = param_from_loc(error.get("loc", ()))
        if error.get("type") == "missing" and param:
            message = f"Missing required parameter: '{param}'."
        else:
            message = _validation_message(error, param)
        return invalid(message, param).response()

    def handle_auth(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return APIError(
            401,
            "Incorrect API key provided."
            if request.headers.get("authorization")
            else "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        ).response()

    def handle_http(request: HttpRequest, exc: HttpError) -> HttpResponse:
        if exc.status_code == 400:
            return invalid("We could not parse the JSON body of your request.", None).response()
        return APIError(exc.status_code, str(exc)).response()

    def handle_404(request: HttpRequest, exc: Exception) -> HttpResponse:
        return not_found_response(request)

    def handle_too_big(request: HttpRequest, exc: Exception) -> HttpResponse:
        return too_large().response()

    def handle_triton(request: HttpRequest, exc: TritonError) -> HttpResponse:
        return from_triton(exc).response()

    def handle_other(request: HttpRequest, exc: Exception) -> HttpResponse:
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
