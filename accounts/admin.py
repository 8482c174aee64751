"""The console for keys, quotas and request logs (staff only, Django admin).

Adding a key is POST, redirect, GET, and the secret lives in no store at all:

- The add form carries a signed hidden `creation_token` naming the public id its key
  will get. Saving stores the key *without* a secret (empty hash: it authenticates
  nothing) and redirects to `created/<link>/`, a link signed for this admin and valid
  for CREATED_LINK_SECONDS.
- The first GET of that page mints the secret and stores only its hash, in one UPDATE
  that matches only a row whose hash is still empty (`key_secret_issue`), and renders
  the secret with `cache-control: no-store`.
- Refresh, Back then Forward, or the link in a second tab: the row has a hash, so the
  page says the secret was shown already. Back from it lands on a fresh add form (the
  POST was replaced by the redirect). Re-submitting a copy of the same form (the same
  creation token) finds the key it already made and redirects to its page: one key.
- Several workers or replicas: the only state is the key's row, so the redirect may
  land on any process. No cache, session, message or URL ever holds the secret.

Limits: the GET that mints the secret is not safe in the HTTP sense (HEAD is refused so
nothing mints a secret it does not show). If that one response is lost (connection
dropped after the UPDATE), the secret is gone: revoke the key and add another, as with
any lost secret. A key whose page was never loaded in time keeps no secret and can never
authenticate; the change page says so. Two copies of one form submitted at the same
instant race to the unique public id; the loser's transaction rolls back and it is
redirected like any re-submission.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.models import (
    AdminKey,
    ApiKey,
    BudgetAlert,
    KeyModelLimit,
    Project,
    ProjectModelLimit,
    RequestLog,
    new_public_id,
)
from accounts.services import key_revoke, key_rotate, key_secret_issue
from accounts.usage import usage_charts, usage_report

USAGE_DAYS = (1, 7, 14, 30, 90)

# The console's front page lists its own pages (usage) before the apps, and "View site"
# opens the API docs; with DOCS_ENABLED off there is no site to view, so no link.
admin.site.site_header = admin.site.site_title = "LLM gateway console"
admin.site.index_title = "Console"
admin.site.index_template = "admin/accounts/index.html"
admin.site.site_url = "/docs" if settings.DOCS_ENABLED else None
# How long the redirect target of an added key may still mint its secret. A redirect
# takes well under a second; the margin covers a slow link or a stalled first load.
CREATED_LINK_SECONDS = 600
CREATION_SALT = "accounts.admin.apikey.creation"
CREATED_SALT = "accounts.admin.apikey.created"


def _creation_token() -> str:
    return signing.dumps(new_public_id(), salt=CREATION_SALT)


def _creation_public_id(token: str) -> str | None:
    """The public id a creation token names, or None if it was not signed here."""
    try:
        return signing.loads(token, salt=CREATION_SALT)
    except signing.BadSignature:
        return None


def _secret_page(
    request, site, what: str, name: str, display: str, secret: str, note: str, back: str
) -> HttpResponse:
    """A secret shown once, in the response to the request that made it (never stored)."""
    context = {
        **site.each_context(request),
        "title": what,
        "what": what,
        "name": name,
        "display": display,
        "secret": secret,
        "note": note,
        "back": back,
    }
    response = TemplateResponse(request, "admin/accounts/secret_shown.html", context)
    response["cache-control"] = "no-store"
    return response


class KeyModelLimitInline(admin.TabularInline):
    model = KeyModelLimit
    extra = 0


class ProjectModelLimitInline(admin.TabularInline):
    model = ProjectModelLimit
    extra = 0


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = (
        "name", "public_id", "created_at", "archived_at", "rpm_limit", "tpm_limit",
        "max_concurrency", "budget_tokens", "budget_amount", "budget_period",
    )  # fmt: skip
    search_fields = ("name", "public_id")
    readonly_fields = ("public_id", "is_default", "created_at", "archived_at")
    inlines = [ProjectModelLimitInline]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "alert_webhook_url":
            kwargs["assume_scheme"] = "https"  # Django 6's default, chosen now
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    fieldsets = (
        (None, {"fields": ("name", "public_id", "is_default", "created_at", "archived_at")}),
        (
            "Limits shared by the project's keys",
            {
                "fields": (
                    "rpm_limit",
                    "tpm_limit",
                    "max_concurrency",
                    ("budget_tokens", "budget_amount", "budget_period"),
                    "alert_webhook_url",
                )
            },
        ),
    )


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = (
        "project", "budget", "threshold", "window", "created_at", "delivered_at", "attempts",
        "last_error",
    )  # fmt: skip
    list_filter = ("budget", "threshold")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(AdminKey)
class AdminKeyAdmin(admin.ModelAdmin):
    """Admin API keys: the secret is made when the key is added and shown on that
    response only (like `manage.py createadminkey`)."""

    list_display = ("name", "display", "created_at", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = ("display", "created_at", "revoked_at", "last_used_at")
    fields = ("name", "display", "expires_at", "created_at", "revoked_at", "last_used_at")
    actions = ["revoke"]

    @admin.display(description="key")
    def display(self, key: AdminKey) -> str:
        return key.display if key.public_id else "(made when saved)"

    def save_model(self, request: HttpRequest, obj: AdminKey, form, change: bool) -> None:
        if not change:
            fresh, raw = AdminKey.issue(name=obj.name, expires_at=obj.expires_at)
            obj.public_id, obj.secret_hash, obj.last_four = (
                fresh.public_id, fresh.secret_hash, fresh.last_four,
            )  # fmt: skip
            obj._secret = raw  # this response only; never stored
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: AdminKey, post_url_continue=None):
        return _secret_page(
            request, self.admin_site, "Admin API key created", obj.name, obj.display,
            obj._secret, "It can call /v1/organization/ only.",
            reverse("admin:accounts_adminkey_changelist"),
        )  # fmt: skip

    @admin.action(description="Revoke selected admin keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[AdminKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} admin key(s).", messages.SUCCESS)


class ApiKeyAddForm(forms.ModelForm):
    """The add form; its token makes submitting one form twice create one key."""

    creation_token = forms.CharField(
        widget=forms.HiddenInput, required=False, initial=_creation_token
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        cleaned["public_id"] = _creation_public_id(cleaned.get("creation_token") or "")
        if cleaned["public_id"] is None:
            raise forms.ValidationError(
                "This form is incomplete: reload the page, fill it in again."
            )
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "display",
        "project",
        "owner",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "rpm_limit",
        "tpm_limit",
        "max_concurrency",
        "budget_tokens",
        "budget_period",
    )
    list_filter = ("revoked_at", "budget_period", "all_models", "project")
    search_fields = ("name", "public_id", "owner__username")
    readonly_fields = ("display", "created_at", "revoked_at", "last_used_at", "rotation")
    filter_horizontal = ("allowed_models",)
    autocomplete_fields = ("owner",)
    inlines = [KeyModelLimitInline]
    actions = ["revoke", "rotate_now", "rotate_hour", "rotate_day", "rotate_week"]
    fieldsets = (
        (None, {"fields": ("name", "owner", "project", "display", "expires_at", "revoked_at")}),
        ("Models", {"fields": ("all_models", "allowed_models")}),
        (
            "Quota",
            {
                "fields": (
                    "rpm_limit",
                    "tpm_limit",
                    "max_concurrency",
                    ("budget_tokens", "budget_amount", "budget_period"),
                )
            },
        ),
        ("Access", {"fields": ("allowed_networks", "rotation")}),
        ("Use", {"fields": ("created_at", "last_used_at")}),
    )

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {**super().get_changeform_initial_data(request), "project": Project.default().pk}

    @admin.display(description="previous secret")
    def rotation(self, key: ApiKey) -> str:
        until = key.previous_valid_until
        if not key.previous_secret_hash or until is None or until <= timezone.now():
            return "none valid"
        return f"valid until {until:%Y-%m-%d %H:%M:%S} UTC"

    def _rotate(self, request: HttpRequest, queryset: QuerySet[ApiKey], grace: timedelta):
        keys = list(queryset.filter(revoked_at__isnull=True))
        if len(keys) != 1:
            self.message_user(request, "Rotate one key at a time.", messages.ERROR)
            return None
        key = keys[0]
        raw = key_rotate(key=key, grace=grace)
        note = (
            f"The previous secret stays valid until {key.previous_valid_until:%Y-%m-%d %H:%M} UTC."
            if grace
            else "The previous secret no longer works (within a second)."
        )
        return _secret_page(
            request, self.admin_site, "New secret for the key", key.name, key.display, raw,
            note, reverse("admin:accounts_apikey_change", args=[key.pk]),
        )  # fmt: skip

    @admin.action(description="Rotate the secret (old one stops now)")
    def rotate_now(self, request, queryset):
        return self._rotate(request, queryset, timedelta(0))

    @admin.action(description="Rotate the secret (old one valid 1 more hour)")
    def rotate_hour(self, request, queryset):
        return self._rotate(request, queryset, timedelta(hours=1))

    @admin.action(description="Rotate the secret (old one valid 1 more day)")
    def rotate_day(self, request, queryset):
        return self._rotate(request, queryset, timedelta(days=1))

    @admin.action(description="Rotate the secret (old one valid 7 more days)")
    def rotate_week(self, request, queryset):
        return self._rotate(request, queryset, timedelta(days=7))

    @admin.display(description="key")
    def display(self, key: ApiKey) -> str:
        if not key.public_id:
            return "(generated when saved)"
        if not key.has_secret:
            return f"{key.display} (secret never shown: this key cannot authenticate)"
        return key.display

    def get_fieldsets(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is not None:
            return self.fieldsets
        (title, options), *rest = self.fieldsets
        return ((title, {**options, "fields": (*options["fields"], "creation_token")}), *rest)

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_urls(self):
        created = self.admin_site.admin_view(require_GET(self.created_view))
        # Before the admin's own URLs: their "<path:object_id>/" would match it.
        return [
            path("created/<str:link>/", created, name="accounts_apikey_created"),
            *super().get_urls(),
        ]

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context=None):
        if request.method == "POST" and (key := self._submitted_before(request)):
            return self._redirect_created(request, key)
        try:
            return super().add_view(request, form_url, extra_context)
        except IntegrityError:
            # Another submission of this form saved its key between our check and our
            # INSERT; the unique public id refused this one (and rolled it back).
            if key := self._submitted_before(request):
                return self._redirect_created(request, key)
            raise

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if not change:
            obj.public_id = form.cleaned_data["public_id"]  # no secret yet: see the docstring
        if not change and obj.project_id is None:
            obj.project = Project.default()
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None):
        return self._redirect_created(request, obj)

    def created_view(self, request: HttpRequest, link: str) -> HttpResponse:
        """Show a key added by this admin with its secret, on the first load only."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        try:
            claim = signing.loads(link, salt=CREATED_SALT, max_age=CREATED_LINK_SECONDS)
            expired = False
        except signing.SignatureExpired:
            claim = signing.loads(link, salt=CREATED_SALT)
            expired = True
        except signing.BadSignature:
            raise Http404 from None
        key = get_object_or_404(ApiKey, pk=claim["key"])
        mine = claim["user"] == request.user.pk
        secret = key_secret_issue(key=key) if mine and not expired else None
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "key": key,
            "secret": secret,
            "not_mine": not mine,
            "opts": self.opts,
        }
        response = TemplateResponse(request, "admin/accounts/apikey_created.html", context)
        response["cache-control"] = "no-store"
        return response

    def _submitted_before(self, request: HttpRequest) -> ApiKey | None:
        public_id = _creation_public_id(request.POST.get("creation_token", ""))
        return ApiKey.objects.filter(public_id=public_id).first() if public_id else None

    def _redirect_created(self, request: HttpRequest, key: ApiKey) -> HttpResponseRedirect:
        link = signing.dumps({"key": key.pk, "user": request.user.pk}, salt=CREATED_SALT)
        return HttpResponseRedirect(reverse("admin:accounts_apikey_created", args=[link]))

    @admin.action(description="Revoke selected keys (effective within a second)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            key_revoke(key=key)
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


class StatusClassFilter(admin.SimpleListFilter):
    title = "status class"
    parameter_name = "status_class"

    def lookups(self, request, model_admin):
        return [("2xx", "2xx success"), ("4xx", "4xx client error"), ("5xx", "5xx server error")]

    def queryset(self, request, queryset):
        if self.value():
            low = int(self.value()[0]) * 100
            return queryset.filter(status__gte=low, status__lt=low + 100)
        return queryset


class StatusCodeFilter(admin.AllValuesFieldListFilter):
    """Each status code seen; titled apart from StatusClassFilter (both were "status")."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.title = "status code"


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    # What fits a 1366 px screen beside the filters; the rest is on each row's page.
    list_display = ("when", "key", "model", "endpoint", "status", "tokens", "latency")
    list_filter = (
        StatusClassFilter,
        ("status", StatusCodeFilter),
        "model",
        ("api_key", admin.RelatedOnlyFieldListFilter),
        "created_at",
        "streamed",
        "cancelled",
    )
    fieldsets = (
        (
            "Request",
            {"fields": ("created_at", "request_id", "key", "model", "endpoint", "client_ip")},
        ),
        ("Outcome", {"fields": ("status", "error_type", "finish_reason", "streamed", "cancelled")}),
        (
            "Tokens and time",
            {"fields": ("prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms")},
        ),
        ("Content (REQUEST_LOG_CONTENT)", {"fields": ("prompt_text", "response_text")}),
    )
    search_fields = ("=request_id",)
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over a large table on every page
    change_list_template = "admin/accounts/requestlog/change_list.html"
    readonly_fields = ("key",)  # computed; with no change permission every field is read-only

    @admin.display(description="time (UTC)", ordering="created_at")
    def when(self, log: RequestLog) -> str:
        return log.created_at.strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="key", ordering="key_public_id")
    def key(self, log: RequestLog) -> str:
        return f"sk-gw-{log.key_public_id}" if log.key_public_id else "-"

    @admin.display(description="tokens in/out")
    def tokens(self, log: RequestLog) -> str:
        return f"{log.prompt_tokens} / {log.completion_tokens}"

    @admin.display(description="latency ms", ordering="latency_ms")
    def latency(self, log: RequestLog) -> str:
        return f"{log.latency_ms:,.0f}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # The log is a record of what was served: prunerequestlogs ages it out, whole days
        # at a time; nobody removes single rows from the console.
        return False

    def get_urls(self):
        usage = self.admin_site.admin_view(self.usage_view)
        return [path("usage/", usage, name="accounts_requestlog_usage"), *super().get_urls()]

    def usage_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            days = int(request.GET.get("days", 14))
        except ValueError:
            days = 14
        days = days if days in USAGE_DAYS else 14
        report = usage_report(days=days)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Usage, last {days} days",
            "opts": self.opts,
            "days": days,
            "day_choices": USAGE_DAYS,
            "report": report,
            "charts": usage_charts(report),
            "currency": settings.GATEWAY_CURRENCY.upper(),
            "generated_at": timezone.now(),
        }
        return TemplateResponse(request, "admin/accounts/usage.html", context)
