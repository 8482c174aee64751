"""Quota subjects: the sets of counters a request is admitted against (accounts/quota/).

Below both the key lookup (accounts/services.py builds a key's QuotaPlan) and the
quota stores, which both use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Per plan, the models whose subjects are kept made.
MODELS_REMEMBERED = 64


@dataclass(frozen=True, slots=True)
class Subject:
    """One set of counters a request is admitted against, and its limits.

    `tag` is the key's project id: every counter of a project and of its keys shares
    it (the Redis hash tag {p<tag>}), so one script can reach all of them on Redis
    Cluster. `name` is unique among subjects: "k12" (key 12), "p3" (project 3),
    "k12:m:<model>", "p3:m:<model>".
    """

    tag: int
    name: str
    scope: str  # "key" or "project": whose limit a refusal names
    model: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_concurrency: int | None = None
    budget_tokens: int | None = None
    budget_money: int | None = None  # money units
    budget_period: str = "month"

    @property
    def has_limits(self) -> bool:
        return any(
            v is not None
            for v in (
                self.rpm_limit,
                self.tpm_limit,
                self.max_concurrency,
                self.budget_tokens,
                self.budget_money,
            )
        )

    def as_dict(self) -> dict:
        # Its fields are all plain values: no deep copy (dataclasses.asdict) needed.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, fields: dict) -> Subject:
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class QuotaPlan:
    """Which subjects a key's requests are admitted against, per model."""

    key: Subject
    project: Subject | None = None
    key_models: dict[str, Subject] = field(default_factory=dict)
    project_models: dict[str, Subject] = field(default_factory=dict)
    # model -> its subjects, made on first use (a plan lives as long as its cached key).
    _by_model: dict[str, tuple[Subject, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def subjects(self, model: str = "") -> tuple[Subject, ...]:
        """The subjects with limits, the key first (an empty tuple: nothing to enforce)."""
        known = self._by_model.get(model)
        if known is not None:
            return known
        found = (
            self.key,
            self.key_models.get(model),
            self.project,
            self.project_models.get(model),
        )
        made = tuple(s for s in found if s is not None and s.has_limits)
        if len(self._by_model) < MODELS_REMEMBERED:  # bounded: model names come from clients
            self._by_model[model] = made
        return made
