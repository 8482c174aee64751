"""`python manage.py demo`: dev Triton, the demo model, and the gateway on :9900.

Everything runs on this machine: the real `tritonserver` binary on CPU with the
scripted TensorRT-LLM model, SQLite, and uvicorn. Stops everything on Ctrl-C.
"""

from __future__ import annotations

import secrets
import signal
import socket
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from llmgateway.devtriton.server import DevTriton, free_port
from llmgateway.management.commands.serve import run_uvicorn
from llmgateway.services import model_upsert

DEMO_MODEL = "qwen1.5-chat"
TOKENIZER = Path(__file__).resolve().parents[2] / "devtriton" / "tokenizer"


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _admin_and_key() -> tuple[str, str]:
    """A superuser `admin` with a fresh password, and a new API key for it."""
    from django.contrib.auth import get_user_model

    password = secrets.token_urlsafe(12)
    admin, _ = get_user_model().objects.get_or_create(
        username="admin", defaults={"is_staff": True, "is_superuser": True}
    )
    admin.is_staff = admin.is_superuser = True
    admin.set_password(password)
    admin.save()
    if not settings.GATEWAY_PLATFORM:
        return password, ""
    from accounts.services import key_create

    _, secret = key_create(owner=admin, name="demo")
    return password, secret


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _pick(port: int) -> int:
    return port if _port_free(port) else free_port()


class Command(BaseCommand):
    help = "Start the demo: dev Triton, the demo model registered, the gateway on --port."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9900)
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--trtllm-version", choices=["0.8", "recent"], default="0.8")

    def handle(self, *args, **options) -> None:
        # uvicorn re-raises SIGTERM after its graceful shutdown; unwind instead, so the
        # dev Triton below is stopped rather than left running.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        call_command("migrate", interactive=False, verbosity=0)
        triton = DevTriton(
            grpc_port=_pick(8001),
            http_port=_pick(8000),
            metrics_port=_pick(8002),
            models={"tensorrt_llm": options["trtllm_version"]},
            state_dir=Path(settings.BASE_DIR) / "var" / "devtriton",
        )
        self.stdout.write("starting dev Triton (tritonserver on CPU)...")
        with triton:
            model_upsert(
                name=DEMO_MODEL,
                triton_url=triton.grpc_url,
                triton_model="tensorrt_llm",
                tokenizer_path=str(TOKENIZER),
                model_type="qwen2-chat",
                enabled=True,
            )
            password, secret = _admin_and_key()
            self._print_banner(options, triton, password, secret)
            run_uvicorn(
                host=options["host"],
                port=options["port"],
                workers=options["workers"],
                access_log=True,
            )

    def _print_banner(self, options: dict, triton: DevTriton, password: str, secret: str) -> None:
        base = f"http://localhost:{options['port']}"
        auth = f'-H "Authorization: Bearer {secret}" ' if secret else ""
        lines = [
            "",
            f"dev Triton: grpc {triton.grpc_url} (TensorRT-LLM {options['trtllm_version']} interface)",
            f"model:      {DEMO_MODEL}",
            f"gateway:    {base}",
            f"admin:      {base}/admin/  user admin, password {password}",
            f"API key:    {secret or '(keys are off: GATEWAY_PLATFORM=false)'}",
            "",
            "try:",
            f'  curl -X POST {base}/generate {auth}-d \'{{"prompt": "who are you?"}}\'',
            f"  curl {base}/v1/chat/completions {auth}-H 'content-type: application/json' "
            f'-d \'{{"model": "{DEMO_MODEL}", "messages": [{{"role": "user", "content": "hi"}}]}}\'',
            "",
        ]
        self.stdout.write("\n".join(lines))
