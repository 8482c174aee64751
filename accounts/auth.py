"""The one authentication class, applied to the inference routers in build_api()."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security import HttpBearer

from accounts.models import ADMIN_KEY_PREFIX
from accounts.services import Caller, caller_lookup, key_touch
from llmgateway.context import request_context
from llmgateway.errors import APIError

# Azure OpenAI's `api-key` header, as Django names it in request.META.
AZURE_META = "HTTP_API_KEY"


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key")


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer <key>` (OpenAI) or `api-key: <key>` (Azure OpenAI clients).

    Returns the key's Caller (Ninja keeps it as `request.auth`, where the edge takes it
    to pass on as a value); every failure is a 401 with code invalid_api_key, so the
    official clients raise AuthenticationError.
    """

    async def __call__(self, request: HttpRequest) -> Caller:  # type: ignore[override]
        raw = self._presented(request)
        if not raw:
            raise _unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        if raw.startswith(ADMIN_KEY_PREFIX):
            raise _unauthorized(
                "Admin API keys cannot be used for non-administration endpoints. "
                "Use a project API key."
            )
        caller = await caller_lookup(raw)
        if caller is None:
            raise _unauthorized("Incorrect API key provided.")
        if caller.key.revoked:
            raise _unauthorized("This API key has been revoked.")
        if caller.key.project_archived:
            raise _unauthorized("This API key's project has been archived.")
        if not caller.key.is_active():
            raise _unauthorized("This API key has expired.")
        address = request.META.get("REMOTE_ADDR")
        if not caller.key.admits_address(address):
            # The request-log middleware writes this request's one row (the key is valid).
            raise APIError(
                403,
                f"Your IP address ({address or 'unknown'}) is not allowed to use this API key.",
                type="invalid_request_error",
                code="ip_not_allowed",
            )
        key_touch(caller.key)
        request_context(request).key = caller.key.public_id  # for log lines: never the secret
        return caller

    def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        raise NotImplementedError  # __call__ does the work, asynchronously

    @staticmethod
    def _presented(request: HttpRequest) -> str:
        # META, not request.headers (which parses every header into a dict first).
        value = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return request.META.get(AZURE_META, "").strip()


api_key_auth = ApiKeyAuth()
