"""What a request reserves, what it used and how it ended: the vocabulary between the
runner (llmgateway/runner/) and the platform that admits and settles it (accounts/).

The runner admits a request once it knows the model and the token reservation
(prompt tokens plus the most it may generate), before anything reaches Triton,
and settles its `Admission` exactly once when it ends, however it ends (success,
error, client disconnect, deadline). `settle` must be safe to call while the
task is being cancelled.

The runner may pass its generation to admission as `early` (a `Startable`): the
platform may then send it to Triton while the quota store is still deciding (see
accounts.admission), and cancels it if the request is not admitted. Either way the
runner starts it again after admission (`start()` is idempotent) and owns it from there.

With the platform off (settings.GATEWAY_PLATFORM) a request's admission is a
`NullAdmission`: nothing enforced, nothing recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(slots=True)
class Usage:
    """Tokens a request used: its prompt, and what was generated (all choices)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of the completion tokens, those of a reasoning model's reasoning (None: the
    # model has no reasoning format, and usage says nothing of it).
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


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
    settled: bool

    async def settle(self, outcome: Outcome) -> None: ...


@dataclass(slots=True)
class NullAdmission:
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    records: ClassVar[bool] = False

    async def settle(self, outcome: Outcome) -> None:
        self.settled = True
