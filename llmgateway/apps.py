from __future__ import annotations

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "llmgateway"
    verbose_name = "LLM gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from llmgateway import checks  # noqa: F401 - registers the deploy checks
