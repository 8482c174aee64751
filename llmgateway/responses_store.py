"""Stored /v1/responses answers (models.StoredResponse): kept per key owner, read back
for `previous_response_id`, GET, DELETE and input_items, pruned after a retention.

What is kept is the conversation's text, so it follows the request logs' privacy
setting: with REQUEST_LOG_CONTENT off the gateway keeps no content, and no response
is stored (the Response echoes `store: false`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from llmgateway.db import orm
from llmgateway.models import StoredResponse

BATCH = 10_000


def responses_storable() -> bool:
    """Whether `store: true` keeps anything (REQUEST_LOG_CONTENT, the content setting)."""
    return bool(settings.REQUEST_LOG_CONTENT)


def _owned(owner_id: int | None):
    rows = StoredResponse.objects.all()
    return rows.filter(owner__isnull=True) if owner_id is None else rows.filter(owner_id=owner_id)


@orm
def response_get(*, owner_id: int | None, response_id: str) -> StoredResponse | None:
    """The owner's stored response `response_id` (None: unknown, deleted, expired or
    another owner's, which all read the same)."""
    cutoff = timezone.now() - timedelta(days=settings.RESPONSES_RETENTION_DAYS)
    return _owned(owner_id).filter(id=response_id, created_at__gte=cutoff).first()


@orm
def response_save(
    *, owner_id: int | None, body: dict[str, Any], context: list[dict[str, Any]]
) -> None:
    StoredResponse.objects.create(
        id=body["id"],
        owner_id=owner_id,
        created_at=datetime.fromtimestamp(body["created_at"], UTC),
        model=body["model"][:255],
        context=_storable(context),
        body=_storable(body),
    )


def _storable(value: Any) -> Any:
    """`value` with NUL characters in its text replaced by U+FFFD: PostgreSQL's jsonb
    refuses them, and a conversation may carry one (accounts.logs.storable does the
    same for logs)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    return value


@orm
def response_delete(*, owner_id: int | None, response_id: str) -> bool:
    return _owned(owner_id).filter(id=response_id).delete()[0] > 0


def responses_prune(*, days: float) -> int:
    """Delete stored responses older than `days`, in batches; how many were deleted."""
    cutoff = timezone.now() - timedelta(days=days)
    deleted = 0
    while True:
        ids = list(
            StoredResponse.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[
                :BATCH
            ]
        )
        if not ids:
            return deleted
        deleted += StoredResponse.objects.filter(pk__in=ids).delete()[0]


def conversation_of(stored: StoredResponse) -> list[dict[str, Any]]:
    """The items a response continuing `stored` starts from: its context, then its output."""
    return [*stored.context, *stored.body.get("output", [])]


def items_page(
    items: list[dict[str, Any]], *, limit: int, order: str, after: str | None, before: str | None
) -> dict[str, Any]:
    """OpenAI's cursor page of `items` (oldest first as given): `order` desc is newest
    first; `after` / `before` are item ids the page starts after / ends before."""
    ordered = items if order == "asc" else items[::-1]
    ids = [item.get("id") for item in ordered]
    start = ids.index(after) + 1 if after in ids else 0
    end = ids.index(before) if before in ids else len(ordered)
    window = ordered[start:end]
    data = window[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(window) > limit,
    }
