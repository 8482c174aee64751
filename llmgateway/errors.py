"""The one error every layer raises: OpenAI's envelope {"error": {message, type, param, code}}.

`APIError` and the constructors for the errors more than one layer raises live here,
below everyone that uses them: the edge (llmgateway/api/errors.py installs the
handlers that answer with it), the runner, vision, and accounts (401, 404, 429). What a
Triton failure becomes is the runner's (runner/lifecycle.py's `from_triton`).
"""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpResponse

from llmgateway import db


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

    @property
    def kind(self) -> str:
        """What a request log records as the error: the code, else the type."""
        return self.code or self.type

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
    """A missing model, and a model the caller may not use: the two answer alike."""
    return APIError(
        404,
        f"The model `{name}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def model_misconfigured() -> APIError:
    return APIError(
        503,
        "The model is misconfigured on the server.",
        type="server_error",
        code="model_misconfigured",
    )


def server_error() -> APIError:
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


def too_large() -> APIError:
    return APIError(413, "The request body is too large.", code="request_too_large")
