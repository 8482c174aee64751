"""The seed's entry point: migrate, register the model, serve the ASGI app under uvicorn.

    python manage.py serve --host 0.0.0.0 --port 9900 --model-name tensorrt_llm \\
        --tokenizer-path PATH --server-url 127.0.0.1:8001 --workers 4 --model_type qwen2-chat

--server-url takes several Tritons too: `--server-url 10.0.0.5:8001,10.0.0.6:8001`.
"""

from __future__ import annotations

import argparse

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from llmgateway.addresses import targets_parse
from llmgateway.cli import OneLineErrors, port, whole_number
from llmgateway.models import ModelType
from llmgateway.services import model_upsert


def run_uvicorn(
    *, host: str, port: int, workers: int, access_log: bool, reload: bool = False
) -> None:
    """Serve the ASGI app until SIGINT or SIGTERM. `reload` (runserver): a supervisor
    process restarts the server process whenever a .py file of the project's two
    packages changes (not the virtualenv, the database or test artifacts)."""
    import uvicorn
    from django.conf import settings

    from llmgateway import metrics
    from llmgateway.logconfig import uvicorn_log_config

    metrics.multiprocess_prepare(workers)

    # uvicorn's reload imports the app by name in each new process, hence the string.
    packages = [str(settings.BASE_DIR / name) for name in ("llmgateway", "accounts")]
    reloading = {"reload": True, "reload_dirs": packages} if reload else {}
    uvicorn.run(
        "llmgateway.asgi:application",
        host=host,
        port=port,
        workers=workers,
        lifespan="on",  # handler.py: waits for settlements and log writes on shutdown
        # httptools with header size limits and head/body timeouts (HTTP_* settings).
        http="llmgateway.http_limits:LimitedHttpToolsProtocol",
        access_log=access_log,
        # uvicorn's own lines (and its access log) in LOG_FORMAT, with request fields.
        log_config=uvicorn_log_config(settings.LOGGING),
        timeout_keep_alive=60,
        **reloading,
    )


def _addresses(value: str) -> str:
    """--server-url: one or more host:port, stored as "a:8001,b:8001"."""
    try:
        return ",".join(str(t) for t in targets_parse(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Command(OneLineErrors, BaseCommand):
    help = "Apply migrations, upsert the model config, and serve the gateway under uvicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="Address to listen on (default: %(default)s; 0.0.0.0 for every interface).",
        )
        parser.add_argument(
            "--port", type=port, default=9900, help="Port to listen on (default: %(default)s)."
        )
        parser.add_argument(
            "--workers",
            type=whole_number(1, 1024),
            default=1,
            help="uvicorn worker processes (default: %(default)s).",
        )
        parser.add_argument("--model-name", dest="model_name", help="Model name inside Triton.")
        parser.add_argument(
            "--served-model-name",
            help="Public name clients send as `model` (default: --model-name).",
        )
        parser.add_argument(
            "--tokenizer-path",
            dest="tokenizer_path",
            help="The model's tokenizer directory (needed with --model-name).",
        )
        parser.add_argument(
            "--server-url",
            dest="server_url",
            default="127.0.0.1:8001",
            type=_addresses,
            help="Triton gRPC address(es), host:port, comma-separated; a name with several "
            "addresses, such as a headless Service, is one endpoint per address "
            "(default: %(default)s).",
        )
        parser.add_argument(
            "--model_type",
            "--model-type",
            dest="model_type",
            default=ModelType.QWEN2_CHAT,
            choices=list(ModelType.values),
            help="How prompts are built: qwen2-chat (ChatML), qwen-vl (images too) or "
            "chat-template (the tokenizer's own); default %(default)s.",
        )
        parser.add_argument(
            "--context-length",
            type=whole_number(2),
            default=None,
            help="Prompt plus output tokens the engine accepts (default: the model config's, 4096 when new).",
        )
        parser.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="Let the tokenizer directory's own code run (Qwen-VL's tokenizer needs it). "
            "Without the flag the model config keeps its stored setting (off when new).",
        )
        parser.add_argument(
            "--access-log",
            action="store_true",
            help="Also log uvicorn's access line per request (the gateway's own access "
            "line, with latency and tokens, follows LOG_ACCESS).",
        )
        parser.add_argument(
            "--no-migrate",
            action="store_true",
            help="Skip `migrate` at start-up (when a separate job migrates).",
        )

    def handle(self, *args, **options) -> None:
        if not options["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        if options["model_name"]:
            if not options["tokenizer_path"]:
                self.stderr.write("--tokenizer-path is required with --model-name")
                raise SystemExit(2)
            fields = {
                "name": options["served_model_name"] or options["model_name"],
                "triton_url": options["server_url"],
                "triton_model": options["model_name"],
                "tokenizer_path": options["tokenizer_path"],
                "model_type": options["model_type"],
                "enabled": True,
            }
            if options["context_length"]:
                fields["context_length"] = options["context_length"]
            if options["trust_remote_code"]:
                fields["trust_remote_code"] = True
            config = model_upsert(**fields)
            self.stdout.write(
                f"model {config.name!r} → {config.triton_model} at {config.triton_url}"
            )
        self.stdout.write(f"serving on http://{options['host']}:{options['port']}")
        run_uvicorn(
            host=options["host"],
            port=options["port"],
            workers=options["workers"],
            access_log=options["access_log"],
        )
