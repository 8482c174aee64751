"""`manage.py prunerequestlogs [--days N]`: keep the request-log table bounded.

Deletes in batches so no single statement holds locks for long; run it daily.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from accounts.models import RefusedRequests, RequestLog
from llmgateway.cli import OneLineErrors, positive_number

BATCH = 10_000
MAX_DAYS = 36_525  # a century: more keeps everything (timedelta would overflow)


class Command(OneLineErrors, BaseCommand):
    help = (
        "Delete request logs and refused-request counts older than --days "
        "(default REQUEST_LOG_RETENTION_DAYS)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=positive_number(MAX_DAYS),
            default=None,
            help="Keep this many days of logs (fractions allowed; default "
            "REQUEST_LOG_RETENTION_DAYS). 0 or less would delete every log: refused.",
        )

    def handle(self, *args, **options) -> None:
        days = options["days"]
        days = settings.REQUEST_LOG_RETENTION_DAYS if days is None else days
        cutoff = timezone.now() - timedelta(days=days)
        deleted = 0
        while True:
            ids = list(
                RequestLog.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[
                    :BATCH
                ]
            )
            if not ids:
                break
            deleted += RequestLog.objects.filter(pk__in=ids).delete()[0]
        RefusedRequests.objects.filter(minute__lt=cutoff).delete()
        self.stdout.write(f"Deleted {deleted} request logs older than {days:g} days.")
