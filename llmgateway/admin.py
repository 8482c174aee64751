from __future__ import annotations

from django.contrib import admin

from llmgateway.models import ModelConfig


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ("name", "triton_url", "triton_model", "model_type", "enabled", "updated_at")
    list_filter = ("enabled", "model_type")
    search_fields = ("name", "triton_model", "triton_url")
    fieldsets = (
        (None, {"fields": ("name", "enabled", "model_type", "tool_format")}),
        ("Triton", {"fields": ("triton_url", "triton_model", "tokenizer_path")}),
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
