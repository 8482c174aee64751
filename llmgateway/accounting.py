"""What a request reserves, what it used and how it ended: the vocabulary between the
runner (llmgateway/runner/) and the platform that admits and settles it (accounts/).

The runner admits a request once it knows the model and the token reservation
(prompt tokens plus the most it may generate), before anything reaches Triton,
and settles its `Admission` exactly once when it ends, however it ends (success,
error, client disconnect, deadline). `settle` must be safe to call while the
task is being cancelled. `settle_now` is the same settlement made in the caller's
step where the admission can (the Redis store on an open connection), so the runner
needs no task for it; where it cannot, it does nothing and says so.

The runner may pass its generation to admission as `early` (a `Startable`): the
platform may then send it to Triton while the quota store is still deciding (see
accounts.admission), and cancels it if the request is not admitted. Either way the
runner starts it again after admission (`start()` is idempotent) and owns it from there.

With the platform off (settings.GATEWAY_PLATFORM) a request's admission is a
`NullAdmission`: nothing enforced, nothing recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Protocol

# Money is counted (budgets, quota stores) as integers of 10^-MONEY_PLACES currency units:
# prices have 4 decimal places per 1M tokens, so every cost is exact in these units.
MONEY_PLACES = 10
MONEY_SCALE = 10**MONEY_PLACES
PER_TOKENS = Decimal(1_000_000)


def money_units(amount: Decimal) -> int:
    """`amount` of currency as integer money units (exact for prices' 4 places)."""
    return int(amount.scaleb(MONEY_PLACES).to_integral_value())


def money_amount(units: int) -> Decimal:
    return Decimal(units).scaleb(-MONEY_PLACES)


@dataclass(frozen=True, slots=True)
class Prices:
    """A model's prices per 1M tokens (ModelConfig), in settings.GATEWAY_CURRENCY."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None  # None: cached prompt tokens cost the input price

    def cost(self, usage: Usage) -> Decimal:
        """The exact cost of `usage` (Decimal arithmetic throughout, no rounding)."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        total = (
            (usage.prompt_tokens - cached) * self.input
            + cached * cached_price
            + usage.completion_tokens * self.output
        )
        return total / PER_TOKENS

    def most(self, prompt_tokens: int, max_tokens: int) -> Decimal:
        """The most a request can cost: every prompt token at the dearer input price."""
        dearest = max(self.input, self.cached_input or Decimal(0))
        return (prompt_tokens * dearest + max_tokens * self.output) / PER_TOKENS


@dataclass(slots=True)
class Usage:
    """Tokens a request used: its prompt, and what was generated (all choices)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of the prompt tokens, those served from a prefix cache, when Triton reports them.
    cached_tokens: int = 0
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
    prices: Prices | None = None


class Startable(Protocol):
    async def start(self) -> None: ...

    def cancel(self) -> None: ...


class Admission(Protocol):
    headers: dict[str, str]
    # False when settle() records nothing (no keys, quotas or logs): callers may skip it.
    records: ClassVar[bool]
    settled: bool

    async def settle(self, outcome: Outcome) -> None: ...

    def settle_now(self, outcome: Outcome) -> bool:
        """`settle` without a suspension where it can be: True when settled; False,
        with nothing done, where it cannot: then call `settle`."""
        ...


@dataclass(slots=True)
class NullAdmission:
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    records: ClassVar[bool] = False

    async def settle(self, outcome: Outcome) -> None:
        self.settled = True

    def settle_now(self, outcome: Outcome) -> bool:
        # Never: a subclass's settle (a test's recording admission) is then called.
        return False
