"""`manage.py revokeapikey KEY`: KEY is the key, its display prefix or its public id."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import KEY_PREFIX, ApiKey, parse_public_id
from accounts.services import key_revoke
from llmgateway.cli import OneLineErrors


def public_id_of(value: str) -> str:
    return parse_public_id(value) or value.removeprefix(KEY_PREFIX).split("…")[0].strip("-")


class Command(OneLineErrors, BaseCommand):
    help = "Revoke an API key: every replica refuses it within a second."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="The key, its sk-gw-<id> prefix, or its public id.")

    def handle(self, *args, **options) -> None:
        key = ApiKey.objects.filter(public_id=public_id_of(options["key"])).first()
        if key is None:
            raise CommandError("No such API key.")
        key_revoke(key=key)
        self.stdout.write(f"Revoked {key.display} ({key.name}).")
