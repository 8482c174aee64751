"""The one authentication class, applied to the inference routers in build_api()."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security import HttpBearer

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
        caller = await caller_lookup(raw)
        if caller is None:
            raise _unauthorized("Incorrect API key provided.")
        if caller.key.revoked:
            raise _unauthorized("This API key has been revoked.")
        if not caller.key.is_active():
            raise _unauthorized("This API key has expired.")
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
