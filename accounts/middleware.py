"""The request log's guard: exactly one request-log row per API request.

A request the runner admitted has its row written by its settlement
(accounts/admission.py). This middleware writes the row of every request that never
got that far (bad JSON, no key, unknown model, 429, ...). Health checks are not logged.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from accounts.logs import body_model, log_record
from accounts.quota import quota_store
from llmgateway import background
from llmgateway.context import request_context
from llmgateway.paths import is_api_path

logger = logging.getLogger(__name__)


def is_logged_path(path: str) -> bool:
    return is_api_path(path) and not path.startswith("/health")


def _error_code(response: HttpResponse) -> str | None:
    if response.status_code < 400 or response.streaming:
        return None
    try:
        error = orjson.loads(response.content).get("error") or {}
        return error.get("code") or error.get("type")
    except Exception:
        return None


def _log_unadmitted(request: HttpRequest, status: int, error_type: str | None) -> None:
    """Write the row of a request that was never admitted, in the background.

    The record is built now: the request's body (for the model's name and, with
    REQUEST_LOG_CONTENT, the prompt) is closed once the response is sent. The caller
    is authentication's, when it got that far (Ninja keeps it as `request.auth`).
    """
    try:
        record = log_record(
            request,
            caller=getattr(request, "auth", None),
            model=body_model(request),
            status=status,
            error_type=error_type,
        )
    except Exception:
        logger.exception("could not log request %s", request_context(request).request_id)
        return
    background.spawn(_write(record))


async def _write(record: dict) -> None:
    try:
        await quota_store().log(record)
    except Exception:
        logger.exception("could not log request %s", record.get("request_id", "?"))


class request_log_middleware:  # noqa: N801 - named like a function in settings.MIDDLEWARE
    sync_capable = False
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.enabled = settings.GATEWAY_PLATFORM
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if not self.enabled or not is_logged_path(request.path):
            return await self.get_response(request)
        context = request_context(request)
        try:
            response = await self.get_response(request)
        except asyncio.CancelledError:
            if context.admission is None:
                _log_unadmitted(request, 499, "client_disconnected")
            raise
        if context.admission is None:
            _log_unadmitted(request, response.status_code, _error_code(response))
        return response
