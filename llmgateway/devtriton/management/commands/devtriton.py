"""``python manage.py devtriton``: run the dev Triton in the foreground until interrupted."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from llmgateway.cli import OneLineErrors, port
from llmgateway.devtriton.server import DevTriton, DevTritonError

TRTLLM_VERSIONS = ["0.8", "recent"]


class Command(OneLineErrors, BaseCommand):
    help = "Run a real tritonserver with the scripted TensorRT-LLM model (CPU only, for dev and demos)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="Address the gRPC, HTTP and metrics servers listen on (default: %(default)s; "
            "0.0.0.0 for every interface). Several dev Tritons may share ports on "
            "127.0.0.1, 127.0.0.2, ...",
        )
        parser.add_argument(
            "--grpc-port",
            type=port,
            default=8001,
            help="Triton's gRPC port, what the gateway calls (default: %(default)s).",
        )
        parser.add_argument(
            "--http-port",
            type=port,
            default=8000,
            help="Triton's HTTP port: health and model config (default: %(default)s).",
        )
        parser.add_argument(
            "--metrics-port",
            type=port,
            default=8002,
            help="Triton's Prometheus metrics port (default: %(default)s).",
        )
        parser.add_argument(
            "--trtllm-version",
            choices=TRTLLM_VERSIONS,
            default="recent",
            help="Which tensorrt_llm interface the model declares (default: recent).",
        )
        parser.add_argument(
            "--model-name",
            default="tensorrt_llm",
            help="The model's name inside Triton (default: %(default)s).",
        )
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="Where the model repository, log and events go (default: a temp dir, removed on exit).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        server = DevTriton(
            grpc_port=options["grpc_port"],
            http_port=options["http_port"],
            metrics_port=options["metrics_port"],
            models={options["model_name"]: options["trtllm_version"]},
            state_dir=options["state_dir"],
            host=options["host"],
        )
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            server.start()
        except DevTritonError as exc:
            raise CommandError(str(exc)) from exc
        try:
            self._announce(server, options)
            while not stop.wait(0.5):
                if not server.is_running():
                    raise CommandError(f"tritonserver exited unexpectedly:\n{server.log_tail()}")
        finally:
            server.stop()
        self.stdout.write("dev Triton stopped")

    def _announce(self, server: DevTriton, options: dict[str, Any]) -> None:
        self.stdout.write(
            self.style.SUCCESS(
                f"dev Triton ready: grpc {server.grpc_url}, model {options['model_name']!r} "
                f"({options['trtllm_version']} interface)"
            )
        )
        self.stdout.write(f"log: {server.log_path}  events: {server.events_path}")
        self.stdout.flush()
