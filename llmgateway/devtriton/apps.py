from __future__ import annotations

from django.apps import AppConfig


class DevTritonConfig(AppConfig):
    name = "llmgateway.devtriton"
    label = "devtriton"
    verbose_name = "Dev Triton"
