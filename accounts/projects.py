"""Projects, their service accounts, keys and per-model rate limits: the services behind
the Admin API (accounts/admin_api/) and `manage.py createadminkey`.

Every function here is sync (call through llmgateway.db.orm from async code) and raises
APIError with OpenAI's wording where a request is at fault.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import (
    AdminKey,
    ApiKey,
    Project,
    ProjectModelLimit,
    ServiceAccount,
    parse_admin_public_id,
)
from accounts.services import key_create, owner_get_or_create
from llmgateway.errors import APIError

ADMIN_API_OWNER = "admin-api"  # the user that owns keys made through the Admin API
KEY_ID_PREFIX = "key_"
SERVICE_ACCOUNT_PREFIX = "svc_acct_"
RATE_LIMIT_PREFIX = "rl-"


def not_found(what: str, ident: str) -> APIError:
    return APIError(404, f"No such {what}: '{ident}'.")


def project_get(public_id: str, *, writable: bool = False) -> Project:
    project = Project.objects.filter(public_id=public_id).first()
    if project is None:
        raise not_found("project", public_id)
    if writable and project.archived:
        raise APIError(400, f"Project '{public_id}' is archived and cannot be modified.")
    return project


def project_create(*, name: str) -> Project:
    return Project.objects.create(name=name)


def project_update(*, public_id: str, name: str | None) -> Project:
    project = project_get(public_id, writable=True)
    if project.is_default:
        raise APIError(400, "The default project cannot be modified.")
    if name is not None:
        project.name = name
        project.save(update_fields=["name", "updated_at"])
    return project


def project_archive(*, public_id: str) -> Project:
    """Archive (never delete): its keys stop at once (401), within API_KEY_CACHE_SECONDS."""
    project = project_get(public_id)
    if project.is_default:
        raise APIError(400, "The default project cannot be archived.")
    if project.archived_at is None:
        project.archived_at = timezone.now()
        project.save(update_fields=["archived_at", "updated_at"])
    return project


def key_public_id(ident: str) -> str:
    return ident.removeprefix(KEY_ID_PREFIX)


def project_key_get(project: Project, ident: str) -> ApiKey:
    key = (
        ApiKey.objects.filter(
            project=project, public_id=key_public_id(ident), revoked_at__isnull=True
        )
        .select_related("owner", "service_account")
        .first()
    )
    if key is None:
        raise not_found("API key", ident)
    return key


def project_keys(project: Project) -> list[ApiKey]:
    return list(
        ApiKey.objects.filter(project=project, revoked_at__isnull=True)
        .select_related("owner", "service_account")
        .order_by("created_at", "id")
    )


def service_account_create(
    *, project: Project, name: str, with_key: bool = True, **key_fields
) -> tuple[ServiceAccount, ApiKey | None, str | None]:
    """A service account and (unless `with_key` is false) its key; the secret is returned
    once and never stored."""
    if project.archived:
        raise APIError(400, f"Project '{project.public_id}' is archived.")
    with transaction.atomic():
        account = ServiceAccount.objects.create(
            project=project,
            name=name,
            public_id=SERVICE_ACCOUNT_PREFIX + secrets.token_hex(12),
            role="member" if with_key else "none",
        )
        if not with_key:
            return account, None, None
        key, raw = key_create(
            owner=owner_get_or_create(username=ADMIN_API_OWNER),
            name=name,
            project=project,
            **key_fields,
        )
        key.service_account = account
        key.save(update_fields=["service_account", "updated_at"])
    return account, key, raw


def service_account_get(project: Project, ident: str) -> ServiceAccount:
    account = ServiceAccount.objects.filter(project=project, public_id=ident).first()
    if account is None:
        raise not_found("service account", ident)
    return account


def service_account_delete(*, project: Project, ident: str) -> None:
    """Delete the account; its keys are revoked (their log rows stay)."""
    account = service_account_get(project, ident)
    with transaction.atomic():
        ApiKey.objects.filter(service_account=account, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), service_account=None
        )
        account.delete()


def project_key_delete(*, project: Project, ident: str) -> None:
    key = project_key_get(project, ident)
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at", "updated_at"])


# ---- rate limits -------------------------------------------------------------------------


RATE_FIELDS = {"max_requests_per_1_minute": "rpm_limit", "max_tokens_per_1_minute": "tpm_limit"}
# OpenAI's other rate-limit fields: no model here has images, audio or batches to limit.
UNSUPPORTED_RATE_FIELDS = (
    "max_images_per_1_minute",
    "max_audio_megabytes_per_1_minute",
    "max_requests_per_1_day",
    "batch_1_day_max_input_tokens",
)


def rate_ceiling(field: str) -> int:
    if field == "max_requests_per_1_minute":
        return settings.ADMIN_API_MAX_RPM
    return settings.ADMIN_API_MAX_TPM


def project_rate_limits(project: Project) -> list[tuple[str, int, int]]:
    """(model, rpm, tpm) for every enabled model; an unset limit reads as the ceiling."""
    from llmgateway.models import ModelConfig

    set_limits = {row.model: row for row in project.model_limits.all()}
    out = []
    for name in ModelConfig.objects.filter(enabled=True).values_list("name", flat=True):
        row = set_limits.get(name)
        rpm = row.rpm_limit if row is not None and row.rpm_limit is not None else None
        tpm = row.tpm_limit if row is not None and row.tpm_limit is not None else None
        out.append(
            (
                name,
                rpm if rpm is not None else settings.ADMIN_API_MAX_RPM,
                tpm if tpm is not None else settings.ADMIN_API_MAX_TPM,
            )
        )
    return out


def project_rate_limit_update(*, project: Project, ident: str, changes: dict) -> None:
    from llmgateway.models import ModelConfig

    if project.archived:
        raise APIError(400, f"Project '{project.public_id}' is archived.")
    model = ident.removeprefix(RATE_LIMIT_PREFIX)
    if not ident.startswith(RATE_LIMIT_PREFIX) or not (
        ModelConfig.objects.filter(name=model, enabled=True).exists()
    ):
        raise not_found("rate limit", ident)
    values: dict[str, int] = {}
    for field, value in changes.items():
        if field in UNSUPPORTED_RATE_FIELDS:
            raise APIError(
                400, f"'{field}' does not apply to this gateway's models.", param=field,
                code="invalid_value",
            )  # fmt: skip
        if field not in RATE_FIELDS:
            raise APIError(400, f"Unrecognized request argument supplied: {field}", param=field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise APIError(
                400, f"'{field}' must be a positive integer.", param=field, code="invalid_value"
            )
        if value > rate_ceiling(field):
            raise APIError(
                400, f"'{field}' may not exceed {rate_ceiling(field)}.", param=field,
                code="invalid_value",
            )  # fmt: skip
        values[RATE_FIELDS[field]] = value
    row, _ = ProjectModelLimit.objects.get_or_create(project=project, model=model)
    for name, value in values.items():
        setattr(row, name, value)
    row.save()


# ---- admin keys --------------------------------------------------------------------------


def admin_key_create(*, name: str, expires_at: datetime | None = None) -> tuple[AdminKey, str]:
    key, raw = AdminKey.issue(name=name, expires_at=expires_at)
    key.save()
    return key, raw


def admin_key_lookup(raw: str) -> AdminKey | None:
    """The active admin key whose secret is `raw`, or None."""
    public_id = parse_admin_public_id(raw)
    if public_id is None:
        return None
    key = AdminKey.objects.filter(public_id=public_id).first()
    if key is None or not key.matches(raw) or key.revoked_at is not None:
        return None
    now = timezone.now()
    if key.expires_at is not None and key.expires_at <= now:
        return None
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        AdminKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key
