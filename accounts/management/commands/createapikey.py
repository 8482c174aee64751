"""`manage.py createapikey --name NAME [--owner USER] [--models a,b] [limits]`.

The secret is printed once, as the last line of output, and never stored.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.models import BudgetPeriod
from accounts.services import key_create, owner_get_or_create


class Command(BaseCommand):
    help = "Create an API key and print its secret (last line; it is shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--owner", default="admin", help="Username (created if missing).")
        parser.add_argument("--models", help="Comma-separated model names. Default: all.")
        parser.add_argument("--rpm", type=int, help="Requests per minute.")
        parser.add_argument("--tpm", type=int, help="Tokens per minute.")
        parser.add_argument("--concurrency", type=int, help="Concurrent requests.")
        parser.add_argument("--budget", type=int, help="Token budget per --budget-period.")
        parser.add_argument(
            "--budget-period", default=BudgetPeriod.MONTH, choices=list(BudgetPeriod.values)
        )
        parser.add_argument("--expires-in-days", type=float)

    def handle(self, *args, **options) -> None:
        models = options["models"]
        expires = options["expires_in_days"]
        try:
            key, raw = key_create(
                owner=owner_get_or_create(username=options["owner"]),
                name=options["name"],
                models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
                rpm_limit=options["rpm"],
                tpm_limit=options["tpm"],
                max_concurrency=options["concurrency"],
                budget_tokens=options["budget"],
                budget_period=options["budget_period"],
                expires_at=timezone.now() + timedelta(days=expires) if expires else None,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Created API key {key.name!r} ({key.display}) for {key.owner}.")
        self.stdout.write("Store the secret now: it is not kept and cannot be shown again.")
        self.stdout.write(raw)
