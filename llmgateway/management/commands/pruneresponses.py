"""`manage.py pruneresponses [--days N]`: delete stored /v1/responses answers past their
retention (RESPONSES_RETENTION_DAYS). Run it daily, beside prunerequestlogs."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from llmgateway.cli import OneLineErrors, positive_number
from llmgateway.responses_store import responses_prune

MAX_DAYS = 36_525  # a century: more keeps everything (timedelta would overflow)


class Command(OneLineErrors, BaseCommand):
    help = "Delete stored responses older than --days (default RESPONSES_RETENTION_DAYS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=positive_number(MAX_DAYS),
            default=None,
            help="Keep this many days of stored responses (fractions allowed; default "
            "RESPONSES_RETENTION_DAYS).",
        )

    def handle(self, *args, **options) -> None:
        days = options["days"]
        days = settings.RESPONSES_RETENTION_DAYS if days is None else days
        deleted = responses_prune(days=days)
        self.stdout.write(f"Deleted {deleted} stored responses older than {days:g} days.")
