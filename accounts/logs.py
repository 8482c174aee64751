"""Request-log records: built once per request, written with the settlement.

A record is a plain JSON-safe dict so it can travel through the Redis outbox
(accounts/quota/redis_store.py) as well as straight into the database.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import orjson
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.http import HttpRequest

from accounts.models import RequestLog
from llmgateway.context import request_context
from llmgateway.db import database_unreachable
from llmgateway.ids import unique_hex

if TYPE_CHECKING:
    from accounts.services import Caller

logger = logging.getLogger(__name__)

MAX_TEXT = 100_000  # characters of prompt or response text kept when content logging is on
# The body's bytes read for the prompt text: at most 4 UTF-8 bytes per character kept.
PROMPT_BYTES = MAX_TEXT * 4


def _client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def body_model(request: HttpRequest) -> str:
    """The `model` a request body names, for logging requests refused before admission."""
    known = request_context(request).model
    if known is not None:
        return known[:128]
    try:
        body = orjson.loads(request.body)
    except Exception:
        return ""
    model = body.get("model") if isinstance(body, dict) else None
    return model[:128] if isinstance(model, str) else ""


def body_trim(request: HttpRequest) -> None:
    """Cut a request's body, once its view has read it, to what its log row still reads.

    The request lives as long as its answer, and a stream's can last minutes, holding a
    long prompt's whole body. After the view, only `log_record` reads it, for the
    prompt text kept with REQUEST_LOG_CONTENT on: its first PROMPT_BYTES stay, and
    nothing with the setting off. A body never read is left as it is.
    """
    body = request.__dict__.get("_body")
    if body is None:
        return
    kept = body[:PROMPT_BYTES] if settings.REQUEST_LOG_CONTENT else b""
    request._body = kept
    request._stream = io.BytesIO(kept)  # as Django leaves it once the body is read


def log_record(
    request: HttpRequest,
    *,
    caller: Caller | None = None,
    model: str = "",
    endpoint: str = "",
    status: int,
    error_type: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cached_tokens: int = 0,
    cost: Decimal | None = None,
    finish_reason: str | None = None,
    ttft_s: float | None = None,
    streamed: bool = False,
    cancelled: bool = False,
    response_text: str | None = None,
) -> dict:
    context = request_context(request)
    key = caller.key if caller is not None else None
    record = {
        "log_id": unique_hex(),
        "created_at": context.started_at,
        "request_id": storable(context.request_id[:200]),
        "api_key_id": key.id if key is not None else None,
        "key_public_id": key.public_id if key is not None else "",
        "project_id": key.project_id or None if key is not None else None,
        "model": storable(model),
        "endpoint": storable((endpoint or request.path)[:64]),
        "status": status,
        "error_type": storable((error_type or "")[:64]),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
        # A string: exact through JSON (the Redis outbox) and into the numeric column.
        "cost": str(cost) if cost is not None else None,
        "finish_reason": storable((finish_reason or "")[:32]),
        "latency_ms": round((time.monotonic() - context.started) * 1000, 3),
        "ttft_ms": round(ttft_s * 1000, 3) if ttft_s is not None else None,
        "streamed": streamed,
        "cancelled": cancelled,
        "client_ip": _client_ip(request),
        "prompt_text": None,
        "response_text": None,
    }
    if settings.REQUEST_LOG_CONTENT:
        try:
            # Cut before decoding: a 20 MB body would be decoded whole for 100k characters.
            head = request.body[:PROMPT_BYTES]
            record["prompt_text"] = storable(head.decode("utf-8", "replace")[:MAX_TEXT])
        except Exception:  # a body over the size limit cannot be read (413)
            record["prompt_text"] = None
        if response_text is not None:
            record["response_text"] = storable(response_text[:MAX_TEXT])
    return record


def storable(text: str | None) -> str | None:
    """`text` as PostgreSQL stores it: NUL, which it refuses in text, and unpaired
    surrogates, which have no UTF-8 form, replaced by U+FFFD. Every text the
    gateway writes into a log row goes through here (the path a client chose
    included), so no row is lost to a character."""
    if not text:
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def log_row(record: dict) -> RequestLog:
    fields = {"cached_tokens": 0, **record}
    if fields.get("cost") is not None:
        fields["cost"] = Decimal(fields["cost"])
    fields["log_id"] = uuid.UUID(fields["log_id"])
    fields["created_at"] = datetime.fromtimestamp(fields["created_at"], UTC)
    return RequestLog(**fields)


def logs_write(records: list[dict]) -> None:
    """Insert records; one already written (a re-drained outbox item) is skipped."""
    RequestLog.objects.bulk_create([log_row(r) for r in records], ignore_conflicts=True)


# The record's fields as PostgreSQL reads them from JSON (jsonb_to_recordset).
_JSON_COLUMNS = {
    "log_id": "uuid",
    "created_at": "float8",
    "request_id": "text",
    "api_key_id": "bigint",
    "key_public_id": "text",
    "project_id": "bigint",
    "model": "text",
    "endpoint": "text",
    "status": "int",
    "error_type": "text",
    "prompt_tokens": "bigint",
    "completion_tokens": "bigint",
    "cached_tokens": "bigint",
    "cost": "numeric",
    "finish_reason": "text",
    "latency_ms": "float8",
    "ttft_ms": "float8",
    "streamed": "bool",
    "cancelled": "bool",
    "client_ip": "inet",
    "prompt_text": "text",
    "response_text": "text",
}


def _json_insert_sql() -> str:
    names = ", ".join(connection.ops.quote_name(c) for c in _JSON_COLUMNS)
    # Records from before a column existed lack it: the defaults fill in.
    special = {
        "created_at": "to_timestamp(x.created_at)",
        "cached_tokens": "COALESCE(x.cached_tokens, 0)",
    }
    values = ", ".join(special.get(c, f"x.{c}") for c in _JSON_COLUMNS)
    types = ", ".join(f"{c} {t}" for c, t in _JSON_COLUMNS.items())
    return (
        f"INSERT INTO {RequestLog._meta.db_table} ({names}) SELECT {values} "
        f"FROM jsonb_to_recordset(%s::jsonb) AS x({types}) ON CONFLICT (log_id) DO NOTHING"
    )


def logs_write_json(items: list[bytes]) -> list[bytes]:
    """Insert records serialised as JSON objects (the Redis outbox's items); return
    the items the database refuses for good.

    On PostgreSQL the batch goes in as one JSON parameter that the server
    unpacks: a few microseconds per row, against ~150 for building model
    instances for bulk_create, and the drain runs in the gateway's own process.
    A batch the database refuses is retried record by record, so one bad record
    cannot hold the rest back. While the database is out (a connection error,
    a timeout) this raises, and every item stays where it is to be written later.
    """
    if connection.vendor == "postgresql":
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(_json_insert_sql(), [(b"[" + b",".join(items) + b"]").decode()])
            return []
        except DatabaseError as exc:
            if database_unreachable(exc):
                raise
            logger.warning("batch insert of %d request logs failed; one by one", len(items))
    refused = []
    for item in items:
        try:
            with transaction.atomic():
                logs_write([orjson.loads(item)])
        except DatabaseError as exc:
            if database_unreachable(exc):
                raise
            refused.append(item)
        except (ValueError, TypeError, KeyError):
            refused.append(item)
    return refused
