"""Keys: create, revoke, and the per-process cached lookup the API authenticates with.

A lookup is cached for API_KEY_CACHE_SECONDS (1 s by default), misses included,
so a revocation, an expiry change or a quota edit reaches every replica within
that time, and a flood of wrong keys costs one query per key per second. A key
in use is reloaded ahead of expiry, off its requests' path (llmgateway/cache.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, KeyUsage, hash_key, parse_public_id
from llmgateway import background
from llmgateway.cache import RowCache
from llmgateway.db import orm

logger = logging.getLogger(__name__)

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

    def allows(self, model_name: str) -> bool:
        return key_allows(self, model_name)

    @classmethod
    def from_row(cls, key: ApiKey) -> KeyRecord:
        return cls(
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
        return any(
            v is not None
            for v in (self.rpm_limit, self.tpm_limit, self.max_concurrency, self.budget_tokens)
        )

    def is_active(self) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > timezone.now())


def key_allows(key: KeyRecord, model_name: str) -> bool:
    """Whether `key` may use the model called `model_name` (for /v1/models and admission)."""
    return key.models is None or model_name in key.models


def key_create(
    *, owner, name: str, models: list[str] | None = None, **limits
) -> tuple[ApiKey, str]:
    """Save a new key; return it with its secret, which is shown once and never stored.

    `models` None allows every model; a list allows exactly those ModelConfig names.
    """
    from llmgateway.models import ModelConfig

    with transaction.atomic():
        key, raw = ApiKey.issue(owner=owner, name=name, all_models=models is None, **limits)
        key.save()
        KeyUsage.objects.create(key=key)
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


def key_revoke(*, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at", "updated_at"])


def owner_get_or_create(*, username: str):
    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


_last_used: dict[int, float] = {}


def _load(raw: str) -> KeyRecord | None:
    public_id = parse_public_id(raw)
    if public_id is None:
        return None
    key = ApiKey.objects.filter(public_id=public_id).prefetch_related("allowed_models").first()
    if key is None or not key.matches(raw):
        return None
    return KeyRecord.from_row(key)


# Lookup cache: HMAC of the presented key → KeyRecord or None.
_cache: RowCache[KeyRecord | None] = RowCache(
    orm(_load), ttl=lambda: settings.API_KEY_CACHE_SECONDS, max_entries=MAX_CACHED
)


async def key_lookup(raw: str) -> KeyRecord | None:
    """The key whose secret is `raw` (active or not), or None."""
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
