"""`manage.py createapikey --name NAME [--owner USER] [--models a,b] [limits]`.

The secret is printed once, as the last line of output, and never stored. A limit must be
positive and an expiry in the future: anything else is refused in one line.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.models import BudgetPeriod, Project
from accounts.services import key_create, owner_get_or_create
from llmgateway.cli import (
    INT32_MAX,
    INT64_MAX,
    OneLineErrors,
    positive_number,
    text,
    whole_number,
)

# A key may be made to expire up to a century ahead (further is "never": omit the option).
MAX_EXPIRY_DAYS = 36_525


class Command(OneLineErrors, BaseCommand):
    help = "Create an API key and print its secret (last line; it is shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--name",
            required=True,
            type=text(100),
            help="What the key is for (shown in the admin).",
        )
        parser.add_argument(
            "--owner", default="admin", type=text(150), help="Username (created if missing)."
        )
        parser.add_argument("--models", help="Comma-separated model names. Default: all.")
        parser.add_argument(
            "--project",
            type=text(40),
            help="The project's id (proj_...). Default: the default project.",
        )
        parser.add_argument(
            "--rpm", type=whole_number(1, INT32_MAX), help="Requests per minute. Default: no limit."
        )
        parser.add_argument(
            "--tpm",
            type=whole_number(1, INT64_MAX),
            help="Tokens (prompt plus completion) per minute. Default: no limit.",
        )
        parser.add_argument(
            "--concurrency",
            type=whole_number(1, INT32_MAX),
            help="Requests in flight at once. Default: no limit.",
        )
        parser.add_argument(
            "--budget",
            type=whole_number(1, INT64_MAX),
            help="Tokens per --budget-period. Default: no budget.",
        )
        parser.add_argument(
            "--budget-period",
            default=BudgetPeriod.MONTH,
            choices=list(BudgetPeriod.values),
            help="The window --budget counts in (default: %(default)s).",
        )
        parser.add_argument(
            "--expires-in-days",
            type=positive_number(MAX_EXPIRY_DAYS),
            help="Days until the key stops working (fractions allowed). Default: never.",
        )

    def handle(self, *args, **options) -> None:
        models = options["models"]
        expires = options["expires_in_days"]
        project = None
        if options["project"]:
            project = Project.objects.filter(public_id=options["project"]).first()
            if project is None or project.archived:
                raise CommandError(f"no active project {options['project']!r}")
        try:
            key, raw = key_create(
                project=project,
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
