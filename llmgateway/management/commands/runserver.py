"""`python manage.py runserver`: the ASGI app under uvicorn, reloading on code changes.

Django's own runserver is WSGI: it consumes the API's async streams whole, so every
server-sent event arrives at once at the end. This one keeps Django's interface
(`[addr:]port`, `--ipv6`, `--noreload`) and serves exactly what `serve` runs in
production, streams included. The llmgateway app precedes django.contrib.staticfiles
in INSTALLED_APPS so that this command wins; the admin's static files are served by
WhiteNoise (accounts/static.py), as in production.
"""

from __future__ import annotations

import sys
from datetime import datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.core.management.commands.runserver import Command as DjangoRunserver
from django.db import connections

from llmgateway.management.commands.serve import run_uvicorn


class Command(DjangoRunserver):
    help = "Serve the gateway for development under uvicorn (ASGI), reloading on code changes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport", nargs="?", help="Optional port number, or ipaddr:port (default 8000)."
        )
        parser.add_argument(
            "--ipv6", "-6", action="store_true", dest="use_ipv6", help="Use an IPv6 address."
        )
        parser.add_argument(
            "--nothreading",
            action="store_false",
            dest="use_threading",
            help="Accepted for compatibility and ignored: uvicorn serves from one event loop.",
        )
        parser.add_argument(
            "--noreload",
            action="store_false",
            dest="use_reloader",
            help="Do not restart the server when a .py file in the project changes.",
        )

    def run(self, **options) -> None:
        """Called by Django's `handle` once it has parsed addrport into addr and port."""
        if not options["skip_checks"]:
            self.stdout.write("Performing system checks...\n\n")
            check_kwargs = BaseCommand.get_check_kwargs(self, options)
            self.check(display_num_errors=True, **check_kwargs)
        self.check_migrations()
        # The server runs in this process (--noreload) or in children that open their own.
        for connection in connections.all(initialized_only=True):
            connection.close()
        host = "0.0.0.0" if self.addr == "0" else self.addr
        self._banner(host, reload=options["use_reloader"])
        run_uvicorn(
            host=host,
            port=int(self.port),
            workers=1,
            access_log=True,  # a development server shows each request, as Django's does
            reload=options["use_reloader"],
        )

    def _banner(self, host: str, *, reload: bool) -> None:
        address = f"[{host}]" if self._raw_ipv6 else host
        quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
        reloading = "on (.py files in llmgateway/ and accounts/)" if reload else "off"
        self.stdout.write(
            f"{datetime.now().strftime('%B %d, %Y - %X')}\n"
            f"Django version {self.get_version()}, using settings {settings.SETTINGS_MODULE!r}\n"
            f"Starting development server at {self.protocol}://{address}:{self.port}/\n"
            f"ASGI app llmgateway.asgi:application under uvicorn; auto-reload {reloading}.\n"
            f"Quit the server with {quit_command}.\n"
        )
