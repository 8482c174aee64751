"""The console for keys, quotas and request logs (staff only, Django admin)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from accounts.models import ApiKey, KeyUsage, RequestLog
from accounts.services import key_revoke
from accounts.usage import usage_charts, usage_report

USAGE_DAYS = (1, 7, 14, 30, 90)


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
        return key.display if key.public_id else "(generated when saved)"

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if not change:
            issued, secret = ApiKey.issue()
            obj.public_id, obj.secret_hash, obj.last_four = (
                issued.public_id,
                issued.secret_hash,
                issued.last_four,
            )
            request._new_api_key_secret = secret  # rendered once by response_add, never stored
        super().save_model(request, obj, form, change)
        if not change:
            KeyUsage.objects.get_or_create(key=obj)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None):
        secret = getattr(request, "_new_api_key_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        # Shown in this response only: not in a message, a session or a redirect URL.
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "key": obj,
            "secret": secret,
            "opts": self.opts,
        }
        response = TemplateResponse(request, "admin/accounts/apikey_created.html", context)
        response["cache-control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys (effective within a second)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            key_revoke(key=key)
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


class StatusClassFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status_class"

    def lookups(self, request, model_admin):
        return [("2xx", "2xx success"), ("4xx", "4xx client error"), ("5xx", "5xx server error")]

    def queryset(self, request, queryset):
        if self.value():
            low = int(self.value()[0]) * 100
            return queryset.filter(status__gte=low, status__lt=low + 100)
        return queryset


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "request_id",
        "key_public_id",
        "model",
        "endpoint",
        "status",
        "error_type",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "ttft_ms",
        "streamed",
    )
    list_filter = (
        StatusClassFilter,
        "status",
        "model",
        ("api_key", admin.RelatedOnlyFieldListFilter),
        "created_at",
        "streamed",
        "cancelled",
    )
    search_fields = ("=request_id",)
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over a large table on every page
    change_list_template = "admin/accounts/requestlog/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
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
