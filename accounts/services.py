"""Keys: create, revoke, and the per-process cached lookup the API authenticates with.

A lookup is cached for API_KEY_CACHE_SECONDS (1 s by default), misses included,
so a revocation, an expiry change or a quota edit reaches every replica within
that time, and a flood of wrong keys costs one query per key per second. A key
in use is reloaded ahead of expiry, off its requests' path (llmgateway/cache.py).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Project, hash_key, parse_public_id
from accounts.subjects import QuotaPlan, Subject
from llmgateway import background
from llmgateway.accounting import money_units
from llmgateway.cache import RowCache
from llmgateway.db import orm

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LAST_USED_EVERY = 60.0  # seconds between last_used_at writes per key and process
MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a request knows about its key: a snapshot, at most a second old."""

    id: int
    public_id: str
    name: str
    revoked: bool
    expires_at: datetime | None
    models: frozenset[str] | None  # None: every model
    rpm_limit: int | None
    tpm_limit: int | None
    max_concurrency: int | None
    budget_tokens: int | None
    budget_period: str
    project_id: int = 0
    project_public_id: str = ""
    project_archived: bool = False
    budget_money: int | None = None
    networks: tuple[IPNetwork, ...] = ()  # the IP allow-list; empty: any address
    project_alert_url: str = ""  # the project's budget alert webhook (accounts/alerts.py)
    quota: QuotaPlan | None = None  # None: the key's own limits only

    @classmethod
    def from_row(cls, key: ApiKey) -> KeyRecord:
        """`key` with its project and model limits loaded (select/prefetch_related)."""
        project = key.project
        return cls(
            project_id=project.pk,
            project_public_id=project.public_id,
            project_archived=project.archived_at is not None,
            project_alert_url=project.alert_webhook_url,
            budget_money=_units(key.budget_amount),
            networks=networks_parse(key.allowed_networks),
            quota=quota_plan(key),
            id=key.pk,
            public_id=key.public_id,
            name=key.name,
            revoked=key.revoked_at is not None,
            expires_at=key.expires_at,
            models=None if key.all_models else frozenset(m.name for m in key.allowed_models.all()),
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            max_concurrency=key.max_concurrency,
            budget_tokens=key.budget_tokens,
            budget_period=key.budget_period,
        )

    @property
    def has_limits(self) -> bool:
        return bool(self.subjects())

    def subjects(self, model: str = "") -> tuple[Subject, ...]:
        """The quota subjects a request for `model` is admitted against."""
        if self.quota is not None:
            return self.quota.subjects(model)
        own = Subject(
            tag=self.project_id,
            name=f"k{self.id}",
            scope="key",
            rpm_limit=self.rpm_limit,
            tpm_limit=self.tpm_limit,
            max_concurrency=self.max_concurrency,
            budget_tokens=self.budget_tokens,
            budget_money=self.budget_money,
            budget_period=self.budget_period,
        )
        return (own,) if own.has_limits else ()

    def key_subject(self) -> Subject:
        return (
            self.quota.key
            if self.quota is not None
            else Subject(self.project_id, f"k{self.id}", "key")
        )

    def is_active(self) -> bool:
        return (
            not self.revoked
            and not self.project_archived
            and (self.expires_at is None or self.expires_at > timezone.now())
        )

    def admits_address(self, address: str | None) -> bool:
        """Whether the IP allow-list lets `address` (the client address: REMOTE_ADDR, which uvicorn takes from X-Forwarded-For only from FORWARDED_ALLOW_IPS) in."""
        if not self.networks:
            return True
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self.networks)


def _units(amount: Decimal | None) -> int | None:
    return None if amount is None else money_units(amount)


def networks_parse(text: str) -> tuple[IPNetwork, ...]:
    """An allow-list's CIDRs (comma- or newline-separated); raises ValueError if one is bad."""
    parts = [p for p in re.split(r"[\s,]+", text or "") if p]
    return tuple(ipaddress.ip_network(p, strict=False) for p in parts)


def quota_plan(key: ApiKey) -> QuotaPlan:
    """The subjects of `key`: its own limits, its project's, and both per model."""
    project = key.project
    tag = project.pk

    def model_subjects(prefix: str, scope: str, rows) -> dict[str, Subject]:
        return {
            row.model: Subject(
                tag,
                f"{prefix}:m:{row.model}",
                scope,
                model=row.model,
                rpm_limit=row.rpm_limit,
                tpm_limit=row.tpm_limit,
            )
            for row in rows
        }

    def own(name: str, scope: str, row) -> Subject:
        return Subject(
            tag,
            name,
            scope,
            rpm_limit=row.rpm_limit,
            tpm_limit=row.tpm_limit,
            max_concurrency=row.max_concurrency,
            budget_tokens=row.budget_tokens,
            budget_money=_units(row.budget_amount),
            budget_period=row.budget_period,
        )

    return QuotaPlan(
        key=own(f"k{key.pk}", "key", key),
        project=own(f"p{project.pk}", "project", project),
        key_models=model_subjects(f"k{key.pk}", "key", key.model_limits.all()),
        project_models=model_subjects(f"p{project.pk}", "project", project.model_limits.all()),
    )


def key_allows(key: KeyRecord, model_name: str) -> bool:
    """Whether `key` may use the model called `model_name` (for /v1/models and admission)."""
    return key.models is None or model_name in key.models


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the key (its limits and the models it may use) and its owner.

    Authentication (accounts/auth.py) returns it; the edge passes it to the runner as a
    value, and from there it reaches admission, settlement and the request log. Nothing
    reads it off the request on the way. Cached with the key's lookup: one per key.
    """

    key: KeyRecord
    owner_id: int

    def allows(self, model_name: str) -> bool:
        """Whether the caller may use the model: one it may not is hidden, not forbidden
        (/v1/models leaves it out, asking for it is 404 as for a missing model)."""
        return key_allows(self.key, model_name)

    @classmethod
    def from_row(cls, key: ApiKey) -> Caller:
        return cls(key=KeyRecord.from_row(key), owner_id=key.owner_id)


def key_create(
    *,
    owner,
    name: str,
    models: list[str] | None = None,
    project: Project | None = None,
    model_limits: dict[str, tuple[int | None, int | None]] | None = None,
    **limits,
) -> tuple[ApiKey, str]:
    """Save a new key; return it with its secret, which is shown once and never stored.

    `models` None allows every model; a list allows exactly those ModelConfig names.
    `project` None puts it in the default project. `model_limits`: model → (rpm, tpm).
    """
    from accounts.models import KeyModelLimit
    from llmgateway.models import ModelConfig

    with transaction.atomic():
        project = project or Project.default()
        key, raw = ApiKey.issue(
            owner=owner, name=name, all_models=models is None, project=project, **limits
        )
        key.save()
        for model, (rpm, tpm) in (model_limits or {}).items():
            KeyModelLimit.objects.create(key=key, model=model, rpm_limit=rpm, tpm_limit=tpm)
        if models is not None:
            rows = list(ModelConfig.objects.filter(name__in=models))
            missing = set(models) - {r.name for r in rows}
            if missing:
                raise ValueError(f"unknown models: {', '.join(sorted(missing))}")
            key.allowed_models.set(rows)
    return key, raw


def key_secret_issue(*, key: ApiKey) -> str | None:
    """Give a saved key without a secret (added in the admin) its secret, once.

    Returns the secret, or None if the key already has one; `key` is updated either way.
    The UPDATE matches only a row whose hash is still empty, so of concurrent callers (a
    refresh racing the first load, a second tab, another worker or replica) exactly one
    gets a secret: the database decides, no process keeps any state.
    """
    raw = key.new_secret()
    issued = ApiKey.objects.filter(pk=key.pk, secret_hash="").update(
        secret_hash=key.secret_hash, last_four=key.last_four, updated_at=timezone.now()
    )
    if not issued:
        key.refresh_from_db(fields=["secret_hash", "last_four"])
        return None
    return raw


def key_rotate(*, key: ApiKey, grace: timedelta) -> str:
    """Give `key` a new secret; the old one keeps working for `grace` (zero: not at all).

    Returns the new secret, shown once. Both secrets reach every replica within
    API_KEY_CACHE_SECONDS, and the old one stops within that time after its grace ends.
    """
    previous = key.secret_hash
    raw = key.new_secret()
    key.previous_secret_hash = previous if grace > timedelta(0) else ""
    key.previous_valid_until = timezone.now() + grace if grace > timedelta(0) else None
    key.save(
        update_fields=[
            "secret_hash", "last_four", "previous_secret_hash", "previous_valid_until",
            "updated_at",
        ]
    )  # fmt: skip
    return raw


def key_revoke(*, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at", "updated_at"])


def owner_get_or_create(*, username: str):
    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


_last_used: dict[int, float] = {}


def _load(raw: str) -> Caller | None:
    public_id = parse_public_id(raw)
    if public_id is None:
        return None
    key = (
        ApiKey.objects.filter(public_id=public_id)
        .select_related("project")
        .prefetch_related("allowed_models", "model_limits", "project__model_limits")
        .first()
    )
    if key is None:
        return None
    if not key.matches(raw) and not key.matches_previous(raw, timezone.now()):
        return None
    return Caller.from_row(key)


# Lookup cache: HMAC of the presented key → its Caller or None.
_cache: RowCache[Caller | None] = RowCache(
    orm(_load), ttl=lambda: settings.API_KEY_CACHE_SECONDS, max_entries=MAX_CACHED
)


def callers_forget() -> None:
    """Drop this process's cached key lookups: an Admin API change (archive, delete,
    limits) applies at once in the process that made it, and within
    API_KEY_CACHE_SECONDS in every other."""
    _cache.clear()


async def caller_lookup(raw: str) -> Caller | None:
    """The caller whose key's secret is `raw` (active or not), or None."""
    return await _cache.get(hash_key(raw), raw)


def key_touch(key: KeyRecord) -> None:
    """Record use at most once a minute per key and process, off the request's path."""
    now = time.monotonic()
    if now - _last_used.get(key.id, -LAST_USED_EVERY) < LAST_USED_EVERY:
        return
    _last_used[key.id] = now
    background.spawn(_touch(key.id))


def _stamp(key_id: int) -> None:
    ApiKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())


async def _touch(key_id: int) -> None:
    try:
        # Through orm(), like every database call on the API path: bounded, and refused
        # at once while the database is out.
        await orm(_stamp)(key_id)
    except Exception:
        logger.warning("could not record last use of key %s", key_id, exc_info=True)
