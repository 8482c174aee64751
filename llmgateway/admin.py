from __future__ import annotations

from asgiref.sync import async_to_sync
from django.contrib import admin, messages

from llmgateway.models import ModelConfig
from llmgateway.triton.client import get_backend
from llmgateway.triton.errors import TritonError


async def triton_check(config: ModelConfig) -> str:
    """One line on the model's readiness in its Triton, what the gateway makes of its
    interface, and the inputs it declares."""
    backend = get_backend(config.triton_url)
    if not await backend.is_ready(config.triton_model):
        raise TritonError(f"{config.triton_model} is not ready at {config.triton_url}")
    backend.forget(config.triton_model)  # read the interface afresh
    spec = await backend.model_spec(config.triton_model)
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
    return (
        f"ready, {kind}; n>1: {n}; guided decoding: {guided}; "
        f"declared inputs: {', '.join(sorted(spec.inputs))}"
    )


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
            except TritonError as exc:
                self.message_user(request, f"{config.name}: NOT READY ({exc})", messages.ERROR)
            else:
                self.message_user(request, f"{config.name}: {report}", messages.SUCCESS)

    fieldsets = (
        (None, {"fields": ("name", "enabled", "model_type", "tool_format")}),
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
