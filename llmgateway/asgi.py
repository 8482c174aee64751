"""ASGI entry point: `uvicorn llmgateway.asgi:application`."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

import django  # noqa: E402

django.setup(set_prefix=False)

from llmgateway import tracing  # noqa: E402
from llmgateway.db import server_timeouts  # noqa: E402
from llmgateway.handler import GatewayASGIHandler  # noqa: E402

server_timeouts()
tracing.setup()  # off unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER is set

application = tracing.instrument(GatewayASGIHandler())
