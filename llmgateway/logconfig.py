"""How the gateway's log lines look: JSON lines (LOG_FORMAT=json, the image's) or text.

Every line emitted while a request is served carries that request's fields, read from
its `RequestContext` (llmgateway/context.py, a context variable set when the request
begins): `request_id` (the x-request-id the response carries), `key` (the API key's
public id, once authenticated), `model` and `route`; and `trace_id`/`span_id` while
tracing is on (llmgateway/tracing.py). The fields are added by a filter on the handler,
so uvicorn's and other libraries' lines get them too.

What never goes into a line: key secrets and prompt or response text. Nothing here
logs a request's body or headers; tests/test_logs.py runs real requests at DEBUG and
greps every line for a key's secret and the prompt.

Plain logging, no Django import: settings.py builds LOGGING from `logging_config`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from llmgateway.context import current_request

FORMATS = ("text", "json")
# Set by llmgateway/tracing.py when tracing is on: (trace id, span id) of the current
# span as hex, or None outside any span.
trace_ids: Callable[[], tuple[str, str] | None] | None = None

# The request fields, in the order the text format appends them.
REQUEST_FIELDS = ("request_id", "key", "model", "route", "trace_id", "span_id")
# Record attributes other libraries add that say nothing new in a JSON line: uvicorn's
# coloured copy of the message, and Django's request object (its path is in the message).
DROPPED_ATTRIBUTES = ("color_message", "request", "server_time", "taskName")


class RequestFields(logging.Filter):
    """Adds the current request's fields (and trace ids) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_request.get()
        if context is not None:
            record.request_id = context.request_id
            if context.route:
                record.route = context.route
            if context.key:
                record.key = context.key
            if context.model:
                record.model = context.model
        if trace_ids is not None:
            ids = trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message`, then the request's fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{name}={getattr(record, name)}" for name in _present(record)]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


def _present(record: logging.LogRecord) -> list[str]:
    return [name for name in REQUEST_FIELDS if getattr(record, name, None) is not None]


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, the request's fields,
    any `extra` the call passed, and a traceback as `exc_info`."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            reserved_attrs=[*_reserved(), *DROPPED_ATTRIBUTES],
        )


def _reserved() -> list[str]:
    from pythonjsonlogger.core import RESERVED_ATTRS  # noqa: PLC0415

    return list(RESERVED_ATTRS)


def logging_config(*, fmt: str, level: str) -> dict[str, Any]:
    """Django's LOGGING for `fmt` ("json" or "text") at `level`; uvicorn's own loggers
    write through the same handler (see `uvicorn_log_config` for its access log)."""
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT={fmt!r}: use one of {', '.join(FORMATS)}")
    formatter = (
        "llmgateway.logconfig.JsonLineFormatter"
        if fmt == "json"
        else ("llmgateway.logconfig.TextFormatter")
    )
    console = ["console"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": "llmgateway.logconfig.RequestFields"}},
        "formatters": {"gateway": {"()": formatter}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "gateway",
                "filters": ["request"],
            }
        },
        "root": {"handlers": console, "level": level},
        "loggers": {
            # Django's own handlers (DEFAULT_LOGGING: plain text to the console under
            # DEBUG) removed: its lines go to the root's handler like every other.
            "django": {"handlers": [], "propagate": True},
            "django.server": {"handlers": [], "propagate": True},
            "django.request": {"level": "ERROR"},
            # SQL with its parameters (under DEBUG): a request log's prompt, with
            # REQUEST_LOG_CONTENT on, would be one of them. Never below INFO.
            "django.db.backends": {"level": "INFO"},
            # runserver's reloader: uvicorn already says which file changed.
            "watchfiles": {"level": "WARNING"},
            # Login failures and lockouts are warnings; its start-up banner is not news.
            "axes": {"level": "WARNING"},
            # uvicorn's error log (start-up, shutdown, protocol errors) in the same format.
            # No level: uvicorn's --log-level keeps deciding it. Not its parent "uvicorn":
            # dictConfig resets a configured logger's children, and uvicorn.access, off
            # with --no-access-log, would log again. `serve` configures the access log
            # through uvicorn itself (`uvicorn_log_config`).
            "uvicorn.error": {"handlers": console, "propagate": False},
        },
    }


def uvicorn_log_config(logging_dict: dict[str, Any]) -> dict[str, Any]:
    """What `serve` hands uvicorn as log_config: LOGGING plus uvicorn's access log."""
    config = copy.deepcopy(logging_dict)
    config["loggers"]["uvicorn.access"] = {"handlers": ["console"], "propagate": False}
    return config


def describe_exception(exc: BaseException) -> str:
    """An exception as a log line should show it: its type, status and message.

    tritonclient's InferenceServerException keeps its message and status outside
    `args`, so `repr()` shows only `InferenceServerException()`; grpc's errors keep
    theirs behind code() and details().
    """
    name = type(exc).__name__
    status = _call(exc, "status")
    message = _call(exc, "message")
    if message is not None:
        return f"{name} [{status}] {message}" if status else f"{name}: {message}"
    code, details = _call(exc, "code"), _call(exc, "details")
    if code is not None or details is not None:
        code_name = getattr(code, "name", code)
        return f"{name} [{code_name}] {details or ''}".rstrip()
    text = str(exc)
    return f"{name}: {text}" if text else name


def _call(exc: BaseException, method: str) -> Any:
    attribute = getattr(exc, method, None)
    if not callable(attribute):
        return None
    try:
        return attribute()
    except Exception:
        return None
