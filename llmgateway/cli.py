"""What the management commands share: argument types and one-line errors.

A value the command cannot use is refused while the arguments are parsed, as one line on
stderr and exit status 2 (`OneLineErrors`), before it can reach the database and come
back as a traceback (a negative limit broke a CHECK constraint, a huge one overflowed).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from django.core.management.base import CommandError, CommandParser

# The largest values the limits' columns hold (PositiveIntegerField, PositiveBigIntegerField).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def whole_number(low: int = 1, high: int = INT32_MAX) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {value!r}"
            )
        return number

    return parse


def positive_number(high: float) -> Callable[[str], float]:
    """An argparse type: a number above 0 and at most `high`."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None or not 0 < number <= high:
            raise argparse.ArgumentTypeError(
                f"expected a number above 0 and at most {high:g}, got {value!r}"
            )
        return number

    return parse


def text(max_length: int) -> Callable[[str], str]:
    """An argparse type: a non-blank text of at most `max_length` characters."""

    def parse(value: str) -> str:
        if not value.strip() or len(value) > max_length:
            raise argparse.ArgumentTypeError(
                f"expected 1 to {max_length} characters, got {len(value)}"
            )
        return value

    return parse


port = whole_number(1, 65535)


class _OneLineParser(CommandParser):
    def error(self, message: str) -> NoReturn:
        if not self.called_from_command_line:  # call_command(): Django's CommandError
            raise CommandError(f"Error: {message}")
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


class OneLineErrors:
    """A BaseCommand mixin: a bad argument is one line, not argparse's usage block too."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)  # type: ignore[misc]
        # Django builds its own CommandParser; only `error` differs, so the class is swapped.
        parser.__class__ = _OneLineParser
        return parser
