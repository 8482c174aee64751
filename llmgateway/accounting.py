"""The seam between generating endpoints and keys, quotas and request logs.

A route calls `admit()` once it knows the model and the token reservation
(prompt tokens plus the most it may generate), before anything reaches Triton,
and `settle()` exactly once when the request ends, however it ends (success,
error, client disconnect, deadline). `settle` must be safe to call while the
task is being cancelled.

A route may pass its generation as `early`: the implementation may then send it
to Triton while the quota store is still deciding (see accounts.admission), and
cancels it if the request is not admitted. Either way the route starts it again
after admission (`start()` is idempotent) and owns it from there.

Which implementation runs is settings.GATEWAY_ACCOUNTING (an import path to an
`admit` coroutine function); unset, nothing is enforced or recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar, Protocol

from django.conf import settings
from django.http import HttpRequest
from django.utils.module_loading import import_string


@dataclass(slots=True)
class Usage:
    """Tokens a request used: its prompt, and what was generated (all choices)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class Outcome:
    status: int
    usage: Usage
    finish_reason: str | None = None
    error_type: str | None = None
    streamed: bool = False
    # Seconds from the request's start to its first generated token, if any.
    time_to_first_token: float | None = None
    cancelled: bool = False
    # What the client was sent, only when REQUEST_LOG_CONTENT keeps it (else None).
    response_text: str | None = None


@dataclass(slots=True)
class Reservation:
    model: str
    endpoint: str
    prompt_tokens: int
    max_tokens: int  # the most this request may generate, over all choices
    stream: bool


class Startable(Protocol):
    async def start(self) -> None: ...

    def cancel(self) -> None: ...


class Admission(Protocol):
    headers: dict[str, str]
    # False when settle() records nothing (no keys, quotas or logs): callers may skip it.
    records: ClassVar[bool]

    async def settle(self, outcome: Outcome) -> None: ...


@dataclass(slots=True)
class NullAdmission:
    headers: dict[str, str] = field(default_factory=dict)
    records: ClassVar[bool] = False

    async def settle(self, outcome: Outcome) -> None:
        return None


async def _null_admit(
    request: HttpRequest, reservation: Reservation, early: Startable | None = None
) -> Admission:
    return NullAdmission()


@cache
def _admit_function():
    path = getattr(settings, "GATEWAY_ACCOUNTING", "")
    return import_string(path) if path else _null_admit


def model_visible(request: HttpRequest, name: str) -> bool:
    """Whether the caller's key may see the model called `name` (True without keys).

    Models a key may not use are hidden, not forbidden: /v1/models leaves them
    out and asking for one answers 404 model_not_found, as for a missing model.
    """
    allows = getattr(getattr(request, "auth", None), "allows", None)
    return allows(name) if allows is not None else True


async def admit(
    request: HttpRequest, reservation: Reservation, early: Startable | None = None
) -> Admission:
    """Reserve quota for `reservation` or raise APIError (401/404/429)."""
    return await _admit_function()(request, reservation, early)
