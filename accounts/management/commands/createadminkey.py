"""`manage.py createadminkey --name NAME [--expires-in-days N]`: a key for the Admin API.

The secret is printed once, as the last line of output, and never stored. An admin key
can call /v1/organization/ only, never the inference routes.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from accounts.management.commands.createapikey import MAX_EXPIRY_DAYS
from accounts.projects import admin_key_create
from llmgateway.cli import OneLineErrors, positive_number, text


class Command(OneLineErrors, BaseCommand):
    help = "Create an Admin API key and print its secret (last line; it is shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--name",
            required=True,
            type=text(100),
            help="What the key is for (shown in the admin).",
        )
        parser.add_argument(
            "--expires-in-days",
            type=positive_number(MAX_EXPIRY_DAYS),
            help="Days until the key stops working (fractions allowed). Default: never.",
        )

    def handle(self, *args, **options) -> None:
        expires = options["expires_in_days"]
        key, raw = admin_key_create(
            name=options["name"],
            expires_at=timezone.now() + timedelta(days=expires) if expires else None,
        )
        self.stdout.write(f"Created admin key {key.name!r} ({key.display}).")
        self.stdout.write("Store the secret now: it is not kept and cannot be shown again.")
        self.stdout.write(raw)
