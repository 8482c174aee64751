"""The settle-or-log guard: exactly one request-log row per API request with a key.

An admitted request's row is written by its settlement (accounts/admission.py).
This middleware writes the row of every request that never got that far (bad
JSON, unknown model, 429, ...), and settles an admission a route forgot to
settle. Health checks and /metrics are not logged.

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

from accounts.admission import KeyAdmission
from accounts.auth import ApiKeyAuth
from accounts.logs import body_model, log_record, request_started
from accounts.quota import quota_store
from accounts.refusals import refusals
from accounts.services import key_lookup
from llmgateway import background
from llmgateway.accounting import Outcome
from llmgateway.api.middleware import is_api_path
from llmgateway.engine import Usage

logger = logging.getLogger(__name__)


def is_logged_path(path: str) -> bool:
    return is_api_path(path) and not path.startswith(("/health", "/metrics"))


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
    REQUEST_LOG_CONTENT, the prompt) is closed once the response is sent.
    """
    key = getattr(request, "auth", None)
    presented = "" if key is not None else ApiKeyAuth._presented(request)
    if key is None and (not presented or status == 401):
        refusals.count(request.META.get("REMOTE_ADDR"), status)
        return
    try:
        record = log_record(
            request, key=key, model=body_model(request), status=status, error_type=error_type
        )
    except Exception:
        logger.exception("could not log request %s", getattr(request, "request_id", "?"))
        return
    background.spawn(_write(record, presented, status))


async def _write(record: dict, presented: str, status: int) -> None:
    """Write `record`; when its key was never checked (`presented`), check it first."""
    if presented:
        try:
            key = await key_lookup(presented)
        except Exception:
            key = None  # the database is out: log the request, key unknown
        else:
            if key is None or not key.is_active():
                refusals.count(record["client_ip"], status)
                return
        if key is not None:
            record["api_key_id"], record["key_public_id"] = key.id, key.public_id
    try:
        await quota_store().log(record)
    except Exception:
        logger.exception("could not log request %s", record.get("request_id", "?"))


class request_log_middleware:  # noqa: N801 - named like a function in settings.MIDDLEWARE
    sync_capable = False
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.enabled = bool(settings.GATEWAY_ACCOUNTING)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if not self.enabled or not is_logged_path(request.path):
            return await self.get_response(request)
        request_started(request)
        try:
            response = await self.get_response(request)
        except asyncio.CancelledError:
            if getattr(request, "gateway_admission", None) is None:
                _log_unadmitted(request, 499, "client_disconnected")
            raise
        admission = getattr(request, "gateway_admission", None)
        if admission is None:
            _log_unadmitted(request, response.status_code, _error_code(response))
        elif (
            isinstance(admission, KeyAdmission) and not admission.settled and not response.streaming
        ):
            # A route that did not settle: release the reservation and log what we know.
            logger.error("request %s was admitted but never settled", request.request_id)
            await admission.settle(
                Outcome(status=response.status_code, usage=Usage(), error_type="unsettled")
            )
        elif isinstance(admission, KeyAdmission) and response.streaming:
            response._resource_closers.append(_settle_unstarted(admission))
        return response


def _settle_unstarted(admission: KeyAdmission):
    """A closer for a stream the client left before its body started.

    Its generator never ran, so its `finally` never settles. Django calls
    closers from a worker thread, after the stream's own clean-up.
    """
    loop = asyncio.get_running_loop()

    def close() -> None:
        if admission.settled:
            return
        outcome = Outcome(
            status=499,
            usage=Usage(prompt_tokens=admission.reservation.prompt_tokens),
            error_type="client_disconnected",
            streamed=True,
            cancelled=True,
        )
        loop.call_soon_threadsafe(lambda: background.spawn(admission.settle(outcome)))

    return close
