"""The Admin API's authentication: admin keys only (accounts.models.AdminKey).

A missing or unknown key is 401 invalid_api_key, as on the inference routes. A valid
project API key is 403 naming the scope it lacks, in OpenAI's words (see
docs/admin-api.md): API keys can never manage, and admin keys never generate
(accounts/auth.py refuses them on the inference routes).
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security import HttpBearer

from accounts.auth import ApiKeyAuth
from accounts.models import ADMIN_KEY_PREFIX, AdminKey
from accounts.projects import admin_key_lookup
from accounts.services import caller_lookup
from llmgateway.db import orm
from llmgateway.errors import APIError


def missing_scope(scope: str) -> APIError:
    # OpenAI's words, as its Admin API reference's error table and sequence give them.
    return APIError(
        403, f"You have insufficient permissions for this operation. Missing scopes: {scope}."
    )


class AdminKeyAuth(HttpBearer):
    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    async def __call__(self, request: HttpRequest) -> AdminKey:  # type: ignore[override]
        raw = ApiKeyAuth._presented(request)
        if not raw:
            raise APIError(
                401,
                "You didn't provide an API key. Send an admin key as "
                "'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )
        if raw.startswith(ADMIN_KEY_PREFIX):
            key = await orm(admin_key_lookup)(raw)
            if key is not None:
                return key
        else:
            caller = await caller_lookup(raw)
            if caller is not None and caller.key.is_active():
                raise missing_scope(self.scope)
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    def authenticate(self, request: HttpRequest, token: str) -> AdminKey | None:
        raise NotImplementedError  # __call__ does the work, asynchronously


management_auth = AdminKeyAuth("api.management.read")
usage_auth = AdminKeyAuth("api.usage.read")
