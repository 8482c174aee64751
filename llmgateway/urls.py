from __future__ import annotations

from django.contrib import admin
from django.urls import path

from llmgateway.api import build_api

api = build_api()

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", api.urls),
]

handler404 = "llmgateway.api.errors.not_found_response"
handler500 = "llmgateway.api.errors.server_error_response"
