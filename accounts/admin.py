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

from accounts.models import ApiKey, Project, RequestLog, new_public_id
from accounts.services import key_revoke, key_secret_issue
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
    list_filter = ("revoked_at", "budget_period", "all_models")
    search_fields = ("name", "public_id", "owner__username")
    readonly_fields = ("display", "created_at", "revoked_at", "last_used_at")
    filter_horizontal = ("allowed_models",)
    autocomplete_fields = ("owner",)
    actions = ["revoke"]
    fieldsets = (
        (None, {"fields": ("name", "owner", "display", "expires_at", "revoked_at")}),
        ("Models", {"fields": ("all_models", "allowed_models")}),
        (
            "Quota",
            {
                "fields": (
                    "rpm_limit",
                    "tpm_limit",
                    "max_concurrency",
                    ("budget_tokens", "budget_period"),
                )
            },
        ),
        ("Use", {"fields": ("created_at", "last_used_at")}),
    )

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
            "generated_at": timezone.now(),
        }
        return TemplateResponse(request, "admin/accounts/usage.html", context)
