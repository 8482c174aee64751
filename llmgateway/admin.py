from __future__ import annotations

import time
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.http import HttpRequest

from llmgateway.models import ModelConfig, StoredResponse
from llmgateway.triton.errors import TritonError
from llmgateway.triton.pool import Endpoint, get_pool


@dataclass(frozen=True)
class TritonReport:
    ready: bool
    # "ready, decoupled (streams); n>1: ...; declared inputs: ..." or why it is not ready.
    summary: str
    endpoints: list[str]


async def triton_check(config: ModelConfig) -> TritonReport:
    """The model's readiness in its Tritons, what the gateway makes of its interface and
    the inputs it declares, and one line per endpoint as this worker's probes, run now,
    see it (balancing and health are per worker process)."""
    pool = get_pool(config.triton_url)
    model = config.triton_model
    endpoints = [endpoint_line(e, model) for e in await pool.check(model)]
    try:
        if not any(e.serves(model) for e in pool.endpoints):
            raise TritonError(f"{model} is not ready at {config.triton_url}")
        pool.forget(model)  # read the interface afresh
        spec = await pool.model_spec(model)
    except TritonError as exc:
        return TritonReport(False, str(exc), endpoints)
    kind = "decoupled (streams)" if spec.decoupled else "not decoupled"
    n = (
        "one request (num_return_sequences)"
        if spec.accepts("num_return_sequences")
        else "one request per choice"
    )
    guided = (
        f"yes ({spec.parameters['guided_decoding_backend']})"
        if spec.guides_decoding
        else "no (response_format json refused)"
    )
    summary = (
        f"ready, {kind}; n>1: {n}; guided decoding: {guided}; "
        f"declared inputs: {', '.join(sorted(spec.inputs))}"
    )
    return TritonReport(True, summary, endpoints)


def endpoint_line(endpoint: Endpoint, model: str) -> str:
    """`address (from target): state, in flight, last probe, last error`."""
    if endpoint.up is False:
        state = "down"
    elif model in endpoint.not_ready:
        state = "up, model not ready"
    else:
        state = endpoint.state
    origin = f" (from {endpoint.target})" if endpoint.target != endpoint.address else ""
    probe = _ago(endpoint.last_probe_at) if endpoint.last_probe_at else "never"
    error = (
        f"{endpoint.last_error} ({_ago(endpoint.last_error_at)})" if endpoint.last_error else "none"
    )
    return (
        f"endpoint {endpoint.address}{origin}: {state}; {endpoint.in_flight} in flight; "
        f"last probe {probe}; last error: {error}"
    )


def _ago(at: float | None) -> str:
    return f"{max(time.time() - (at or 0.0), 0.0):.1f} s ago"


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ("name", "triton_url", "triton_model", "model_type", "enabled", "updated_at")
    list_filter = ("enabled", "model_type")
    search_fields = ("name", "triton_model", "triton_url")
    actions = ["check_triton"]

    @admin.action(description="Check Triton: readiness, capabilities and declared inputs")
    def check_triton(self, request, queryset) -> None:
        for config in queryset:
            try:
                report = async_to_sync(triton_check)(config)
            except TritonError as exc:  # addresses no pool accepts
                self.message_user(request, f"{config.name}: NOT READY ({exc})", messages.ERROR)
                continue
            if report.ready:
                self.message_user(request, f"{config.name}: {report.summary}", messages.SUCCESS)
            else:
                self.message_user(
                    request, f"{config.name}: NOT READY ({report.summary})", messages.ERROR
                )
            for line in report.endpoints:
                level = messages.INFO if ": up;" in line else messages.WARNING
                self.message_user(request, f"{config.name} {line}", level)

    fieldsets = (
        (None, {"fields": ("name", "enabled", "model_type", "tool_format", "reasoning_format")}),
        (
            "Triton",
            {
                "fields": (
                    "triton_url",
                    "triton_model",
                    "visual_model",
                    "tokenizer_path",
                    "trust_remote_code",
                )
            },
        ),
        (
            "Limits and defaults",
            {
                "fields": (
                    "context_length",
                    "max_output_tokens",
                    "default_max_tokens",
                    "default_temperature",
                    "default_top_p",
                    "default_top_k",
                    "default_repetition_penalty",
                )
            },
        ),
    )


@admin.register(StoredResponse)
class StoredResponseAdmin(admin.ModelAdmin):
    """Stored /v1/responses answers: read and deleted here, written only by the API."""

    list_display = ("id", "owner", "model", "created_at")
    list_filter = ("model", "created_at")
    search_fields = ("=id",)
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = ("id", "owner", "model", "created_at", "context", "body")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
