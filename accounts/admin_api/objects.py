"""The Admin API's objects as OpenAI shapes them, and its list envelope."""

from __future__ import annotations

from typing import Any

from ninja import Schema

from accounts.models import KEY_PREFIX, ApiKey, Project, ServiceAccount
from llmgateway.errors import APIError


def stamp(moment) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def project_object(project: Project) -> dict[str, Any]:
    return {
        "id": project.public_id,
        "object": "organization.project",
        "name": project.name,
        "created_at": stamp(project.created_at),
        "archived_at": stamp(project.archived_at),
        "status": "archived" if project.archived else "active",
        "external_key_id": None,
    }


def service_account_object(account: ServiceAccount) -> dict[str, Any]:
    return {
        "object": "organization.project.service_account",
        "id": account.public_id,
        "name": account.name,
        "role": account.role,
        "created_at": stamp(account.created_at),
    }


def key_object(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    account = key.service_account
    if account is not None:
        owner: dict[str, Any] = {
            "type": "service_account",
            "service_account": {
                "id": account.public_id,
                "name": account.name,
                "role": account.role,
                "created_at": stamp(account.created_at),
            },
        }
    else:
        user = key.owner
        owner = {
            "type": "user",
            "user": {
                "id": f"user_{user.pk}",
                "name": user.get_username(),
                "email": user.email or None,
                "role": "owner",
                "created_at": stamp(user.date_joined),
            },
        }
    body = {
        "object": "organization.project.api_key",
        "id": f"key_{key.public_id}",
        "name": key.name,
        "redacted_value": f"{KEY_PREFIX}{key.public_id[:4]}...{key.last_four}",
        "created_at": stamp(key.created_at),
        "last_used_at": stamp(key.last_used_at),
        "owner_project_access": "active",
        "owner": owner,
    }
    if secret is not None:
        body["value"] = secret
    return body


def rate_limit_object(model: str, rpm: int, tpm: int) -> dict[str, Any]:
    return {
        "object": "project.rate_limit",
        "id": f"rl-{model}",
        "model": model,
        "max_requests_per_1_minute": rpm,
        "max_tokens_per_1_minute": tpm,
    }


def deleted(kind: str, ident: str) -> dict[str, Any]:
    return {"object": f"{kind}.deleted", "id": ident, "deleted": True}


def list_limit(query, default: int = 20, most: int = 100) -> int:
    raw = query.get("limit")
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise APIError(
            400,
            f"Invalid value: '{raw}'. 'limit' must be between 1 and {most}.",
            param="limit",
            code="invalid_value",
        )
    return value


def list_page(
    items: list[dict[str, Any]], *, limit: int, after: str | None, before: str | None = None
) -> dict[str, Any]:
    """OpenAI's list envelope; `after`/`before` are ids in the list (creation order)."""
    ids = [item["id"] for item in items]
    start, stop = 0, len(items)
    for name, ident in (("after", after), ("before", before)):
        if ident and ident not in ids:
            raise APIError(400, f"Invalid value for '{name}': no object '{ident}'.", param=name)
    if after:
        start = ids.index(after) + 1
    if before:
        stop = ids.index(before)
        start = max(start, stop - limit) if not after else start
    page = items[start : min(start + limit, stop)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": start + limit < stop,
    }


def boolean(raw: str | None, param: str) -> bool:
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered not in {"true", "false", "1", "0"}:
        raise APIError(
            400, f"Invalid value: '{raw}'. '{param}' must be a boolean.", param=param,
            code="invalid_value",
        )  # fmt: skip
    return lowered in {"true", "1"}


# ---- bodies and documented answers -----------------------------------------------------


class ProjectIn(Schema):
    name: str
    external_key_id: str | None = None
    geography: str | None = None  # accepted and ignored (one region here)
    residency: str | None = None


class ProjectUpdateIn(Schema):
    name: str | None = None
    external_key_id: str | None = None


class KeyIn(Schema):
    name: str


class ServiceAccountIn(Schema):
    name: str
    create_service_account_only: bool = False


class ProjectOut(Schema):
    id: str
    object: str
    name: str | None
    created_at: int
    archived_at: int | None
    status: str
    external_key_id: str | None = None


class ListOut(Schema):
    object: str
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ApiKeyOut(Schema):
    object: str
    id: str
    name: str
    redacted_value: str
    created_at: int
    last_used_at: int | None
    owner_project_access: str
    owner: dict[str, Any]
    value: str | None = None


class DeletedOut(Schema):
    object: str
    id: str
    deleted: bool


class RateLimitOut(Schema):
    object: str
    id: str
    model: str
    max_requests_per_1_minute: int
    max_tokens_per_1_minute: int


class ServiceAccountOut(Schema):
    object: str
    id: str
    name: str
    role: str
    created_at: int
    api_key: dict[str, Any] | None = None


class PageOut(Schema):
    object: str
    data: list[dict[str, Any]]
    has_more: bool
    next_page: str | None
