"""API keys, their quota counters and leases, and the request log.

A key's secret exists only in the response that issued it. The table keeps
the public id (to find the row), an HMAC-SHA256 of the whole key under a server
pepper (to check it, in constant time) and the last four characters (to tell
keys apart in the admin). A key added in the admin is saved without a secret
(empty hash: it matches nothing) and gets one when the admin's "key created"
page is first loaded (accounts/admin.py).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from llmgateway.models import ModelConfig

KEY_PREFIX = "sk-gw-"
PUBLIC_ID_BYTES = 6  # 12 hex characters: unique, safe to show and log
SECRET_BYTES = 32  # 256 bits from the OS CSPRNG


def _pepper() -> bytes:
    return _pepper_of(getattr(settings, "API_KEY_PEPPER", ""), settings.SECRET_KEY)


@functools.lru_cache(maxsize=4)
def _pepper_of(explicit: str, secret_key: str) -> bytes:
    """Keyed by the settings it derives from: a test that overrides them gets its own."""
    if explicit:
        return explicit.encode()
    # A key derived from SECRET_KEY rather than SECRET_KEY itself, so the two uses
    # of that secret never share a key.
    return hmac.new(secret_key.encode(), b"llmgateway api-key pepper", "sha256").digest()


@functools.lru_cache(maxsize=4)
def _pads(pepper: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's inner and outer hashes with the key's pads already absorbed (RFC 2104)."""
    key = hashlib.sha256(pepper).digest() if len(pepper) > 64 else pepper
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def hash_key(raw: str) -> str:
    """HMAC-SHA256 of the key under the pepper, hex: the same value as
    hmac.new(pepper, raw, "sha256").hexdigest(). Computed from the precomputed pads
    rather than hmac.digest, which releases the GIL around OpenSSL's one-shot HMAC
    on every call: on the event loop that handed the GIL to gRPC's threads and cost
    the request a wait for it back (~25 us at c=16); hashlib keeps the GIL for inputs
    this short, and the pads save half the hashing."""
    inner, outer = _pads(_pepper())
    inner = inner.copy()
    inner.update(raw.encode())
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.hexdigest()


def new_public_id() -> str:
    return secrets.token_hex(PUBLIC_ID_BYTES)


def parse_public_id(raw: str) -> str | None:
    """The public id inside a presented key, or None if it is not shaped like one of ours."""
    if not raw.startswith(KEY_PREFIX):
        return None
    public_id, sep, secret = raw[len(KEY_PREFIX) :].partition("-")
    if not sep or not secret or len(public_id) != PUBLIC_ID_BYTES * 2:
        return None
    return public_id


class BudgetPeriod(models.TextChoices):
    DAY = "day", "per day (UTC)"
    MONTH = "month", "per calendar month (UTC)"
    TOTAL = "total", "in total"


# Money budgets are counted as integers of 10^-MONEY_PLACES currency units (see
# llmgateway/accounting.py); Redis's Lua compares them as doubles, exact below 2^53,
# so a money budget stays below this many currency units.
MAX_BUDGET_AMOUNT = Decimal(900_000)
PROJECT_PREFIX = "proj_"


def networks_validate(value: str) -> None:
    """An IP allow-list: CIDRs or addresses, separated by commas or whitespace."""
    for part in re.split(r"[\s,]+", value or ""):
        if not part:
            continue
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValidationError(f"{part!r} is not an IP address or CIDR.") from None


def new_project_id() -> str:
    return PROJECT_PREFIX + secrets.token_hex(12)


def _budget_amount() -> models.DecimalField:
    return models.DecimalField(
        "money budget",
        max_digits=16,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(MAX_BUDGET_AMOUNT)],
        help_text="In the configured currency (GATEWAY_CURRENCY), per budget period. "
        "Blank: no money budget.",
    )


class Project(models.Model):
    """A team's share of the gateway: it owns keys, and its limits bind all of them
    together on top of each key's own (accounts/quota)."""

    public_id = models.CharField(max_length=40, unique=True, editable=False, default=new_project_id)
    name = models.CharField(max_length=200)
    is_default = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    archived_at = models.DateTimeField(null=True, blank=True, editable=False)
    rpm_limit = models.PositiveIntegerField(
        "requests per minute", null=True, blank=True, help_text="Blank: no limit."
    )
    tpm_limit = models.PositiveBigIntegerField(
        "tokens per minute", null=True, blank=True, help_text="Blank: no limit."
    )
    max_concurrency = models.PositiveIntegerField(
        "concurrent requests", null=True, blank=True, help_text="Blank: no limit."
    )
    budget_tokens = models.PositiveBigIntegerField(
        "token budget", null=True, blank=True, help_text="Blank: no budget."
    )
    budget_amount = _budget_amount()
    budget_period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH
    )
    alert_webhook_url = models.URLField(
        "budget alert webhook",
        max_length=1000,
        blank=True,
        help_text="POSTed once when spend crosses 80% and 100% of a budget. Blank: none.",
    )

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def default(cls) -> Project:
        project = cls.objects.filter(is_default=True).order_by("id").first()
        if project is None:
            project = cls.objects.create(name="Default project", is_default=True)
        return project

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


class BudgetAlert(models.Model):
    """One threshold of one budget of a project crossed in one budget period: the row is
    the once-only claim (unique), made by whichever process saw the crossing first, and
    records its webhook delivery (accounts/alerts.py)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="alerts")
    window = models.CharField(max_length=16)  # the budget period's label, e.g. 2026-12
    budget = models.CharField(max_length=8)  # "tokens" or "money"
    threshold = models.PositiveSmallIntegerField()  # percent
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "window", "budget", "threshold"], name="budget_alert_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project} {self.budget} {self.threshold}% ({self.window})"


class ModelLimit(models.Model):
    """Requests and tokens per minute for one model, on top of the owner's own limits."""

    model = models.CharField(max_length=128, help_text="A model name clients send.")
    rpm_limit = models.PositiveIntegerField(
        "requests per minute", null=True, blank=True, help_text="Blank: no limit."
    )
    tpm_limit = models.PositiveBigIntegerField(
        "tokens per minute", null=True, blank=True, help_text="Blank: no limit."
    )

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.model


class ProjectModelLimit(ModelLimit):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_limits")

    class Meta:
        verbose_name = "per-model limit"
        constraints = [
            models.UniqueConstraint(fields=["project", "model"], name="project_model_limit")
        ]


class ApiKey(models.Model):
    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="keys")
    # Set when the key was made for a service account (Admin API): OpenAI's key owner.
    service_account = models.ForeignKey(
        "ServiceAccount", null=True, blank=True, on_delete=models.CASCADE, related_name="keys"
    )
    public_id = models.CharField(max_length=24, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    last_four = models.CharField(max_length=4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    all_models = models.BooleanField(
        default=True, help_text="Every enabled model. Untick to allow only the models listed."
    )
    allowed_models = models.ManyToManyField(ModelConfig, blank=True, related_name="+")
    rpm_limit = models.PositiveIntegerField(
        "requests per minute", null=True, blank=True, help_text="Blank: no limit."
    )
    tpm_limit = models.PositiveBigIntegerField(
        "tokens per minute",
        null=True,
        blank=True,
        help_text="Prompt plus completion tokens. Blank: no limit.",
    )
    max_concurrency = models.PositiveIntegerField(
        "concurrent requests", null=True, blank=True, help_text="Blank: no limit."
    )
    budget_tokens = models.PositiveBigIntegerField(
        "token budget", null=True, blank=True, help_text="Blank: no budget."
    )
    budget_amount = _budget_amount()
    budget_period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH
    )
    allowed_networks = models.TextField(
        "IP allow-list",
        blank=True,
        validators=[networks_validate],
        help_text="CIDRs (or addresses), one per line or comma-separated, matched against the "
        "client address (behind a proxy, as FORWARDED_ALLOW_IPS lets uvicorn read it). "
        "Blank: any address.",
    )
    # Rotation: the previous secret's hash stays valid until this moment.
    previous_secret_hash = models.CharField(max_length=64, blank=True, editable=False)
    previous_valid_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.display})"

    @property
    def display(self) -> str:
        return f"{KEY_PREFIX}{self.public_id}…{self.last_four}"

    @classmethod
    def issue(cls, **fields) -> tuple[ApiKey, str]:
        """A new unsaved key and its secret; the secret is never stored."""
        key = cls(public_id=new_public_id(), **fields)
        return key, key.new_secret()

    def new_secret(self) -> str:
        """A fresh secret for this key: sets the hash and last four (unsaved), returns it."""
        raw = f"{KEY_PREFIX}{self.public_id}-{secrets.token_urlsafe(SECRET_BYTES)}"
        self.secret_hash, self.last_four = hash_key(raw), raw[-4:]
        return raw

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_hash)

    def matches(self, raw: str) -> bool:
        return self.has_secret and hmac.compare_digest(self.secret_hash, hash_key(raw))

    def matches_previous(self, raw: str, now) -> bool:
        """The secret a rotation replaced, while its grace period lasts."""
        if not self.previous_secret_hash or self.previous_valid_until is None:
            return False
        if self.previous_valid_until <= now:
            return False
        return hmac.compare_digest(self.previous_secret_hash, hash_key(raw))


class KeyModelLimit(ModelLimit):
    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="model_limits")

    class Meta:
        verbose_name = "per-model limit"
        constraints = [models.UniqueConstraint(fields=["key", "model"], name="key_model_limit")]


class ServiceAccount(models.Model):
    """OpenAI's project service account: a named, non-human owner of project keys."""

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="service_accounts")
    name = models.CharField(max_length=200)
    role = models.CharField(max_length=8, default="member")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name


ADMIN_KEY_PREFIX = "sk-admin-"


class AdminKey(models.Model):
    """A credential for the Admin API (/v1/organization/) only, never for inference.

    Hashed like API keys, under the same pepper but a different prefix, so neither kind
    of secret is ever accepted as the other.
    """

    name = models.CharField(max_length=100)
    public_id = models.CharField(max_length=24, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    last_four = models.CharField(max_length=4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "admin API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.display})"

    @property
    def display(self) -> str:
        return f"{ADMIN_KEY_PREFIX}{self.public_id}…{self.last_four}"

    @classmethod
    def issue(cls, **fields) -> tuple[AdminKey, str]:
        key = cls(public_id=new_public_id(), **fields)
        raw = f"{ADMIN_KEY_PREFIX}{key.public_id}-{secrets.token_urlsafe(SECRET_BYTES)}"
        key.secret_hash, key.last_four = hash_key(raw), raw[-4:]
        return key, raw

    def matches(self, raw: str) -> bool:
        return bool(self.secret_hash) and hmac.compare_digest(self.secret_hash, hash_key(raw))


def parse_admin_public_id(raw: str) -> str | None:
    if not raw.startswith(ADMIN_KEY_PREFIX):
        return None
    public_id, sep, secret = raw[len(ADMIN_KEY_PREFIX) :].partition("-")
    if not sep or not secret or len(public_id) != PUBLIC_ID_BYTES * 2:
        return None
    return public_id


class QuotaCounter(models.Model):
    """The database store's counters of one quota subject (accounts/quota/database.py):
    a key ("k12"), a project ("p3"), or either for one model ("k12:m:<model>").

    rpm and tpm are sliding windows of one-second buckets ({"<epoch second>": count},
    accounts.quota.Window); the budget's window is a period label ("2025-06-01",
    "2025-06", "total"); money in integer units (llmgateway.accounting.MONEY_SCALE).
    """

    subject = models.CharField(max_length=200, primary_key=True)
    touched_at = models.DateTimeField(null=True)
    rpm_buckets = models.JSONField(default=dict)
    tpm_buckets = models.JSONField(default=dict)
    budget_window = models.CharField(max_length=16, blank=True)
    budget_used = models.BigIntegerField(default=0)
    money_used = models.BigIntegerField(default=0)


class QuotaHold(models.Model):
    """What one admitted, not yet settled request holds on one subject (database store)."""

    lease_id = models.CharField(max_length=40, db_index=True)
    subject = models.CharField(max_length=200, db_index=True)
    expires_at = models.DateTimeField()
    reserved = models.BigIntegerField()
    cost = models.BigIntegerField(default=0)
    # The tpm bucket (epoch second) the reservation was counted in; null without a tpm limit.
    tpm_window = models.BigIntegerField(null=True)
    budget_window = models.CharField(max_length=16, blank=True)
    money = models.BooleanField(default=False)


class RequestLog(models.Model):
    """One row per inference request, whatever its outcome."""

    # Written more than once when the Redis outbox is re-drained after a crash; unique,
    # so the second insert is ignored.
    log_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(db_index=True)
    request_id = models.CharField(max_length=200, db_index=True)
    # No database constraint: a log row outlives its key, and rows written from the
    # outbox never wait on the key table.
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    key_public_id = models.CharField(max_length=24, blank=True)
    project_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    model = models.CharField(max_length=128, blank=True)
    endpoint = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    # Exact, from the model's prices at settlement (llmgateway.accounting.Prices); null when
    # the model has no prices.
    cost = models.DecimalField(max_digits=24, decimal_places=10, null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    latency_ms = models.FloatField()
    ttft_ms = models.FloatField(null=True, blank=True)
    streamed = models.BooleanField(default=False)
    cancelled = models.BooleanField(default=False)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    prompt_text = models.TextField(null=True, blank=True)
    response_text = models.TextField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["model", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.endpoint} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RefusedRequests(models.Model):
    """Requests refused without a valid key, counted per minute and client address.

    Such requests get no request-log row each (a client without a key could
    otherwise write rows as fast as it can send), only a count here, and
    nothing of their content is kept (accounts/refusals.py).
    """

    minute = models.DateTimeField()
    client_ip = models.CharField(max_length=45, blank=True)  # "" when the server gave none
    requests = models.PositiveBigIntegerField(default=0)
    unauthorized = models.PositiveBigIntegerField(default=0)  # of which answered 401

    class Meta:
        ordering = ["-minute"]
        verbose_name_plural = "refused requests"
        constraints = [
            models.UniqueConstraint(fields=["minute", "client_ip"], name="refused_minute_client")
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.client_ip or '?'}: {self.requests}"
