"""The request log's guard: exactly one request-log row per API request with a key.

A request the runner admitted has its row written by its settlement
(accounts/admission.py). This middleware writes the row of every request that
never got that far (bad JSON, unknown model, 429, ...). Health checks and /metrics
are not logged.

A request refused without a valid key (none sent, or one the auth refused) gets
no row: it is counted per minute and client address (accounts/refusals.py), its
content never kept. A request refused before its key was checked (413, an
unknown path) has the key it sent looked up first, off the response's path: a
valid key gets the row, an invalid one the count, and a key that cannot be
checked (the database out) the row, without the key.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from accounts.auth import ApiKeyAuth
from accounts.logs import body_model, log_record
from accounts.quota import quota_store
from accounts.refusals import refusals
from accounts.services import caller_lookup
from llmgateway import background
from llmgateway.context import request_context
from llmgateway.paths import is_api_path

logger = logging.getLogger(__name__)


def is_logged_path(path: str) -> bool:
    """Inference requests: not probes, metrics or the Admin API (no model, no tokens)."""
    return is_api_path(path) and not path.startswith(("/health", "/metrics", "/v1/organization"))


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
    caller = getattr(request, "auth", None)
    presented = "" if caller is not None else ApiKeyAuth._presented(request)
    if caller is None and (not presented or status == 401):
        refusals.count(request.META.get("REMOTE_ADDR"), status)
        return
    try:
        record = log_record(
            request, caller=caller, model=body_model(request), status=status, error_type=error_type
        )
    except Exception:
        logger.exception("could not log request %s", request_context(request).request_id)
        return
    background.spawn(_write(record, presented, status))


async def _write(record: dict, presented: str, status: int) -> None:
    """Write `record`; when its key was never checked (`presented`), check it first."""
    if presented:
        try:
            caller = await caller_lookup(presented)
        except Exception:
            caller = None  # the database is out: log the request, key unknown
        else:
            if caller is None or not caller.key.is_active():
                refusals.count(record["client_ip"], status)
                return
        if caller is not None:
            record["api_key_id"], record["key_public_id"] = caller.key.id, caller.key.public_id
            record["project_id"] = caller.key.project_id
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
