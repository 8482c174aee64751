"""`python manage.py demo`: dev Triton, the demo models, and the gateway on :9900.

Everything runs on this machine: the real `tritonserver` binary on CPU with the scripted
TensorRT-LLM model and the Qwen-VL pair (visual encoder and LLM), SQLite, and uvicorn.
Stops everything on Ctrl-C.
"""

from __future__ import annotations

import secrets
import signal
import socket
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from llmgateway.cli import OneLineErrors, port, whole_number
from llmgateway.devtriton.management.commands import devtriton
from llmgateway.devtriton.server import DevTriton, free_port
from llmgateway.management.commands.serve import run_uvicorn
from llmgateway.models import ModelType
from llmgateway.services import model_upsert

DEMO_MODEL = "qwen1.5-chat"
VISION_MODEL = "qwen-vl-chat"
# The same scripted model with the <think> parser: [[think:...]] shows reasoning apart.
THINK_MODEL = "qwen3-think"
TOKENIZER = Path(__file__).resolve().parents[2] / "devtriton" / "tokenizer"
# Triton model names of the dev Qwen-VL pair (llmgateway.devtriton.server.MODEL_SOURCES).
VL_LLM, VL_VISUAL = "qwen-vl-llm", "qwen-vl-visual"
# An 8x8 red PNG: small enough to type, enough for the dev encoder to see its colour.
RED_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mO8"
    "IyLCgA0wMeAAg1MCANDoARQXWCREAAAAAElFTkSuQmCC"
)


def trtllm_default() -> str:
    """The interface `devtriton` serves by default: the demo serves the same one."""
    parser = devtriton.Command().create_parser("manage.py", "devtriton")
    return str(parser.get_default("trtllm_version"))


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


def _port_free(number: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", number)) != 0


def _pick(number: int) -> int:
    return number if _port_free(number) else free_port()


def _register_models(triton: DevTriton) -> None:
    common = {"triton_url": triton.grpc_url, "tokenizer_path": str(TOKENIZER), "enabled": True}
    model_upsert(
        name=DEMO_MODEL,
        triton_model="tensorrt_llm",
        model_type=ModelType.QWEN2_CHAT,
        **common,
    )
    model_upsert(
        name=THINK_MODEL,
        triton_model="tensorrt_llm",
        model_type=ModelType.QWEN2_CHAT,
        tool_format="hermes",
        reasoning_format="think",
        **common,
    )
    model_upsert(
        name=VISION_MODEL,
        triton_model=VL_LLM,
        visual_model=VL_VISUAL,
        model_type=ModelType.QWEN_VL,
        **common,
    )


class Command(OneLineErrors, BaseCommand):
    help = (
        "Start the demo: a dev Triton (CPU) serving a chat model and a Qwen-VL pair, both "
        "registered, an admin user and an API key, and the gateway on --port."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="Address the gateway listens on (default: %(default)s; 0.0.0.0 for every "
            "interface).",
        )
        parser.add_argument(
            "--port", type=port, default=9900, help="The gateway's port (default: %(default)s)."
        )
        parser.add_argument(
            "--workers",
            type=whole_number(1, 64),
            default=1,
            help="uvicorn worker processes (default: %(default)s).",
        )
        parser.add_argument(
            "--trtllm-version",
            choices=devtriton.TRTLLM_VERSIONS,
            default=trtllm_default(),
            help="The TensorRT-LLM interface the chat model declares: 0.8 (Triton 24.02, "
            "the seed's) or recent (guided decoding, so structured outputs work); "
            "default %(default)s, as for `devtriton`.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # uvicorn re-raises SIGTERM after its graceful shutdown; unwind instead, so the
        # dev Triton below is stopped rather than left running.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        call_command("migrate", interactive=False, verbosity=0)
        triton = DevTriton(
            grpc_port=_pick(8001),
            http_port=_pick(8000),
            metrics_port=_pick(8002),
            models={
                "tensorrt_llm": options["trtllm_version"],
                VL_VISUAL: "qwen_vl_visual",
                VL_LLM: "qwen_vl_llm",
            },
            state_dir=Path(settings.BASE_DIR) / "var" / "devtriton",
        )
        self.stdout.write("starting dev Triton (tritonserver on CPU)...")
        with triton:
            _register_models(triton)
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
        json = "-H 'content-type: application/json'"
        image = (
            f'{{"type": "image_url", "image_url": {{"url": "{RED_PNG}"}}}}, '
            '{"type": "text", "text": "What is in the picture?"}'
        )
        lines = [
            "",
            f"dev Triton: grpc {triton.grpc_url} (TensorRT-LLM {options['trtllm_version']} "
            "interface, and the Qwen-VL pair)",
            f"models:     {DEMO_MODEL}, {THINK_MODEL} (reasons in <think>), "
            f"{VISION_MODEL} (takes images)",
            f"gateway:    {base}",
            f"API docs:   {base}/docs" if settings.DOCS_ENABLED else None,
            f"admin:      {base}/admin/  user admin, password {password}",
            f"API key:    {secret or '(keys are off: GATEWAY_PLATFORM=false)'}",
            "",
            "try:",
            f"  curl -X POST {base}/generate {auth}"
            f'-d \'{{"model": "{DEMO_MODEL}", "prompt": "who are you?"}}\'',
            f"  curl {base}/v1/chat/completions {auth}{json} "
            f'-d \'{{"model": "{DEMO_MODEL}", "messages": [{{"role": "user", "content": "hi"}}]}}\'',
            f"  curl {base}/v1/chat/completions {auth}{json} "
            f'-d \'{{"model": "{VISION_MODEL}", "messages": [{{"role": "user", "content": '
            f"[{image}]}}]}}'",
            f"  curl {base}/v1/responses {auth}{json} "
            f'-d \'{{"model": "{THINK_MODEL}", "input": '
            '"[[think:A greeting. One word will do.]][[say:Hello!]]"}\'',
            "",
        ]
        self.stdout.write("\n".join(line for line in lines if line is not None))
