"""The management commands' command lines: every option explained, one TensorRT-LLM
default, and a value a command cannot use refused in one line, creating nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import BaseCommand, CommandError

from tests.conftest import ROOT

DOCUMENTED = [
    ("llmgateway", "demo"),
    ("llmgateway.devtriton", "devtriton"),
    ("llmgateway", "serve"),
    ("accounts", "createapikey"),
    ("accounts", "revokeapikey"),
    ("accounts", "prunerequestlogs"),
]


def own_options(parser) -> list:
    """The parser's options that are the command's own (not Django's --verbosity and co)."""
    base = {a.dest for a in BaseCommand().create_parser("manage.py", "x")._actions}
    return [a for a in parser._actions if a.dest not in base]


def parser_of(app: str, name: str):
    return load_command_class(app, name).create_parser("manage.py", name)


@pytest.mark.parametrize("app, name", DOCUMENTED)
def test_every_option_has_help(app, name):
    options = own_options(parser_of(app, name))
    assert options
    undocumented = [a.option_strings or [a.dest] for a in options if not (a.help or "").strip()]
    assert not undocumented, f"{name}: {undocumented}"


def test_demo_and_devtriton_default_to_the_same_tensorrt_llm_interface():
    demo = parser_of("llmgateway", "demo").get_default("trtllm_version")
    devtriton = parser_of("llmgateway.devtriton", "devtriton").get_default("trtllm_version")
    assert demo == devtriton == "recent"


REFUSED = [
    ["--rpm", "-5"],
    ["--rpm", "0"],
    ["--tpm", "0"],
    ["--concurrency", "-1"],
    ["--budget", "ten"],
    ["--rpm", str(2**31)],  # past the column: was a database error
    ["--expires-in-days", "-1"],  # was a key created already expired
    ["--expires-in-days", "0"],
    ["--expires-in-days", "nan"],
    ["--expires-in-days", "1e9"],  # past datetime's range: was an OverflowError
]


@pytest.mark.django_db
@pytest.mark.parametrize("arguments", REFUSED, ids=" ".join)
def test_createapikey_refuses_what_it_cannot_use_and_creates_nothing(arguments):
    from accounts.models import ApiKey

    with pytest.raises(CommandError, match=arguments[0]):
        call_command("createapikey", "--name", "refused", *arguments)
    assert not ApiKey.objects.filter(name="refused").exists()


@pytest.mark.django_db
def test_createapikey_takes_positive_limits_and_a_future_expiry():
    from django.utils import timezone

    from accounts.models import ApiKey

    call_command(
        "createapikey", "--name", "fine", "--rpm", "1", "--tpm", str(2**40), "--expires-in-days",
        "0.5",
    )  # fmt: skip
    key = ApiKey.objects.get(name="fine")
    assert (key.rpm_limit, key.tpm_limit) == (1, 2**40)
    assert timezone.now() < key.expires_at < timezone.now() + timezone.timedelta(days=1)


@pytest.mark.parametrize(
    "command",
    [
        ["createapikey", "--name", "x", "--rpm", "-5"],
        ["createapikey", "--name", "x", "--expires-in-days", "-1"],
        ["createapikey"],
        ["prunerequestlogs", "--days", "0"],
        ["demo", "--port", "70000"],
        ["demo", "--workers", "0"],
        ["serve", "--port", "0"],
        ["serve", "--workers", "-2"],
        ["serve", "--server-url", "nonsense"],
        ["devtriton", "--grpc-port", "eighty"],
    ],
    ids=" ".join,
)
def test_a_refused_value_is_one_line_on_the_command_line(command):
    done = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": "", "SQLITE_PATH": os.devnull},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"manage.py {command[0]}: error: ")
    assert "--help" in lines[0]
