"""Admin API: projects, their API keys, service accounts and rate limits."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest
from ninja import Router

from accounts import projects as svc
from accounts.admin_api.auth import management_auth
from accounts.admin_api.objects import (
    ApiKeyOut,
    DeletedOut,
    KeyIn,
    ListOut,
    ProjectIn,
    ProjectOut,
    ProjectUpdateIn,
    RateLimitOut,
    ServiceAccountIn,
    ServiceAccountOut,
    boolean,
    deleted,
    key_object,
    list_limit,
    list_page,
    project_object,
    rate_limit_object,
    service_account_object,
    stamp,
)
from accounts.models import Project
from accounts.services import callers_forget
from llmgateway.db import orm
from llmgateway.errors import APIError

router = Router(auth=management_auth, tags=["admin: projects"])


async def _run(function, *args, **kwargs):
    return await orm(function)(*args, **kwargs)


async def _changing(function, *args, **kwargs):
    """Run a change that affects keys' lookups (archive, delete, rate limits), then drop
    this process's cached lookups so it applies here at once."""
    try:
        return await orm(function)(*args, **kwargs)
    finally:
        callers_forget()


# ---- projects ----------------------------------------------------------------------------


def _projects_list(query) -> dict[str, Any]:
    limit = list_limit(query)
    projects = Project.objects.order_by("created_at", "id")
    if not boolean(query.get("include_archived"), "include_archived"):
        projects = projects.filter(archived_at__isnull=True)
    items = [project_object(p) for p in projects]
    return list_page(items, limit=limit, after=query.get("after"))


@router.get("/projects", response=ListOut, operation_id="listProjects")
async def projects_list(request: HttpRequest):
    return await _run(_projects_list, request.GET)


@router.post("/projects", response=ProjectOut, operation_id="createProject")
async def projects_create(request: HttpRequest, body: ProjectIn):
    return project_object(await _run(svc.project_create, name=body.name))


@router.get("/projects/{project_id}", response=ProjectOut, operation_id="retrieveProject")
async def projects_retrieve(request: HttpRequest, project_id: str):
    return project_object(await _run(svc.project_get, project_id))


@router.post("/projects/{project_id}", response=ProjectOut, operation_id="modifyProject")
async def projects_modify(request: HttpRequest, project_id: str, body: ProjectUpdateIn):
    project = await _changing(svc.project_update, public_id=project_id, name=body.name)
    return project_object(project)


@router.post("/projects/{project_id}/archive", response=ProjectOut, operation_id="archiveProject")
async def projects_archive(request: HttpRequest, project_id: str):
    return project_object(await _changing(svc.project_archive, public_id=project_id))


# ---- API keys ----------------------------------------------------------------------------


def _keys_list(project_id: str, query) -> dict[str, Any]:
    limit = list_limit(query)
    project = svc.project_get(project_id)
    items = [key_object(k) for k in svc.project_keys(project)]
    return list_page(items, limit=limit, after=query.get("after"))


@router.get("/projects/{project_id}/api_keys", response=ListOut, operation_id="listProjectApiKeys")
async def keys_list(request: HttpRequest, project_id: str):
    return await _run(_keys_list, project_id, request.GET)


def _key_create(project_id: str, name: str) -> dict[str, Any]:
    project = svc.project_get(project_id)
    _, key, raw = svc.service_account_create(project=project, name=name)
    return key_object(key, raw)


@router.post(
    "/projects/{project_id}/api_keys",
    response=ApiKeyOut,
    exclude_unset=True,
    operation_id="createProjectApiKey",
    summary="Create a project API key (gateway extension): `value` is the secret, shown once",
)
async def keys_create(request: HttpRequest, project_id: str, body: KeyIn):
    return await _run(_key_create, project_id, body.name)


def _key_get(project_id: str, key_id: str) -> dict[str, Any]:
    return key_object(svc.project_key_get(svc.project_get(project_id), key_id))


@router.get(
    "/projects/{project_id}/api_keys/{key_id}",
    response=ApiKeyOut,
    exclude_unset=True,
    operation_id="retrieveProjectApiKey",
)
async def keys_retrieve(request: HttpRequest, project_id: str, key_id: str):
    return await _run(_key_get, project_id, key_id)


def _key_delete(project_id: str, key_id: str) -> dict[str, Any]:
    svc.project_key_delete(project=svc.project_get(project_id), ident=key_id)
    return deleted("organization.project.api_key", key_id)


@router.delete(
    "/projects/{project_id}/api_keys/{key_id}",
    response=DeletedOut,
    operation_id="deleteProjectApiKey",
)
async def keys_delete(request: HttpRequest, project_id: str, key_id: str):
    return await _changing(_key_delete, project_id, key_id)


# ---- service accounts --------------------------------------------------------------------


def _accounts_list(project_id: str, query) -> dict[str, Any]:
    limit = list_limit(query)
    project = svc.project_get(project_id)
    if project.archived:
        raise APIError(400, f"Project '{project_id}' is archived.")
    items = [service_account_object(a) for a in project.service_accounts.all()]
    return list_page(items, limit=limit, after=query.get("after"))


@router.get(
    "/projects/{project_id}/service_accounts",
    response=ListOut,
    operation_id="listProjectServiceAccounts",
)
async def accounts_list(request: HttpRequest, project_id: str):
    return await _run(_accounts_list, project_id, request.GET)


def _account_create(project_id: str, name: str, only: bool) -> dict[str, Any]:
    project = svc.project_get(project_id)
    account, key, raw = svc.service_account_create(project=project, name=name, with_key=not only)
    body = service_account_object(account)
    body["api_key"] = None
    if key is not None:
        body["api_key"] = {
            "object": "organization.project.service_account.api_key",
            "value": raw,
            "name": key.name,
            "created_at": stamp(key.created_at),
            "id": f"key_{key.public_id}",
        }
    return body


@router.post(
    "/projects/{project_id}/service_accounts",
    response=ServiceAccountOut,
    operation_id="createProjectServiceAccount",
)
async def accounts_create(request: HttpRequest, project_id: str, body: ServiceAccountIn):
    return await _run(_account_create, project_id, body.name, body.create_service_account_only)


def _account_get(project_id: str, account_id: str) -> dict[str, Any]:
    return service_account_object(svc.service_account_get(svc.project_get(project_id), account_id))


@router.get(
    "/projects/{project_id}/service_accounts/{account_id}",
    response=ServiceAccountOut,
    exclude_unset=True,
    operation_id="retrieveProjectServiceAccount",
)
async def accounts_retrieve(request: HttpRequest, project_id: str, account_id: str):
    return await _run(_account_get, project_id, account_id)


def _account_delete(project_id: str, account_id: str) -> dict[str, Any]:
    svc.service_account_delete(project=svc.project_get(project_id), ident=account_id)
    return deleted("organization.project.service_account", account_id)


@router.delete(
    "/projects/{project_id}/service_accounts/{account_id}",
    response=DeletedOut,
    operation_id="deleteProjectServiceAccount",
)
async def accounts_delete(request: HttpRequest, project_id: str, account_id: str):
    return await _changing(_account_delete, project_id, account_id)


# ---- rate limits -------------------------------------------------------------------------


def _limits_list(project_id: str, query) -> dict[str, Any]:
    limit = list_limit(query, default=100)
    project = svc.project_get(project_id)
    items = [rate_limit_object(*row) for row in svc.project_rate_limits(project)]
    return list_page(items, limit=limit, after=query.get("after"), before=query.get("before"))


@router.get(
    "/projects/{project_id}/rate_limits",
    response=ListOut,
    operation_id="listProjectRateLimits",
)
async def limits_list(request: HttpRequest, project_id: str):
    return await _run(_limits_list, project_id, request.GET)


def _limit_update(project_id: str, limit_id: str, changes: dict) -> dict[str, Any]:
    project = svc.project_get(project_id)
    svc.project_rate_limit_update(project=project, ident=limit_id, changes=changes)
    for row in svc.project_rate_limits(project):
        if f"rl-{row[0]}" == limit_id:
            return rate_limit_object(*row)
    raise svc.not_found("rate limit", limit_id)


@router.post(
    "/projects/{project_id}/rate_limits/{limit_id}",
    response=RateLimitOut,
    operation_id="updateProjectRateLimit",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "max_requests_per_1_minute": {"type": "integer", "minimum": 1},
                            "max_tokens_per_1_minute": {"type": "integer", "minimum": 1},
                        },
                        "additionalProperties": False,
                    }
                }
            }
        }
    },
)
async def limits_update(request: HttpRequest, project_id: str, limit_id: str):
    try:
        changes = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError:
        raise APIError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(changes, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return await _changing(_limit_update, project_id, limit_id, changes)
