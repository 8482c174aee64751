"""Tokenizers shipped as code (Qwen-VL's tiktoken tokenizer): the model config's
trust_remote_code switch, and ChatML for Qwen tokenizers without a chat template."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmgateway.devtriton.server import free_port
from llmgateway.textgen.tokenizer import TokenizerError, load_text_model
from tests.conftest import DEV_LIMITS, TOKENIZER, dev_model_upsert

HERE = Path(__file__).resolve().parent


def remote_tokenizer_dir(target: Path) -> Path:
    """The demo tokenizer's vocabulary behind tests/textgen/remote_tokenizer's code,
    named by auto_map and without a chat template, as Qwen-VL-Chat ships."""
    source = Path(TOKENIZER)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "generation_config.json", "config.json"):
        shutil.copy(source / name, target / name)
    shutil.copy(HERE / "remote_tokenizer" / "tokenization_remote.py", target)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    config.pop("added_tokens_decoder", None)
    config["tokenizer_class"] = "RemoteTokenizer"
    config["auto_map"] = {"AutoTokenizer": ["tokenization_remote.RemoteTokenizer", None]}
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory) -> Path:
    return remote_tokenizer_dir(tmp_path_factory.mktemp("remote") / "tokenizer")


def test_code_in_a_tokenizer_directory_runs_only_when_trusted(remote_dir):
    with pytest.raises(TokenizerError, match="custom code"):
        load_text_model(str(remote_dir))
    trusted = load_text_model(str(remote_dir), trust_remote_code=True)
    assert type(trusted.tokenizer).__name__ == "RemoteTokenizer"
    assert getattr(trusted.tokenizer, "backend_tokenizer", None) is None  # a slow tokenizer
    reference = load_text_model(TOKENIZER)
    text = "Hello wörld 你好 <|im_end|> end"
    assert trusted.encode(text) == reference.encode(text)
    assert trusted.decode(reference.encode(text)) == reference.decode(reference.encode(text))
    assert (trusted.end_id, trusted.pad_id) == (reference.end_id, reference.pad_id)
    assert trusted.special_ids == reference.special_ids


def test_a_qwen_tokenizer_without_a_template_renders_chatml(remote_dir):
    text = load_text_model(str(remote_dir), trust_remote_code=True)
    assert not text.has_chat_template and text.chatml_fallback
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert text.render_chat(messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *messages[:1]]
    assert text.render_chat(with_system, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    )


@pytest.mark.committed_db
def test_the_gateway_serves_a_trusted_code_tokenizer(
    remote_dir, devtriton, model_configs, live_gateway, django_db_blocker
):
    from llmgateway.models import ModelConfig

    with django_db_blocker.unblock():
        dev_model_upsert(
            "remote-on",
            devtriton,
            tokenizer_path=str(remote_dir),
            trust_remote_code=True,
            **DEV_LIMITS,
        )
        dev_model_upsert("remote-off", devtriton, tokenizer_path=str(remote_dir), **DEV_LIMITS)
    try:
        with live_gateway.client() as http:
            answer = http.post("/generate", json={"model": "remote-on", "prompt": "[[say:hi]]"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["text"] == "hi"
            chat = http.post(
                "/v1/chat/completions",
                json={
                    "model": "remote-on",
                    "messages": [{"role": "user", "content": "[[say:yo]]"}],
                },
            )
            assert chat.status_code == 200, chat.text
            assert chat.json()["choices"][0]["message"]["content"] == "yo"
            # The prompt was ChatML (the fallback), token for token.
            chatml = (
                "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n[[say:yo]]<|im_end|>\n<|im_start|>assistant\n"
            )
            expected = len(load_text_model(TOKENIZER).encode(chatml))
            assert chat.json()["usage"]["prompt_tokens"] == expected
            refused = http.post("/generate", json={"model": "remote-off", "prompt": "[[say:hi]]"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "model_misconfigured"
    finally:
        with django_db_blocker.unblock():
            ModelConfig.objects.filter(name__in=["remote-on", "remote-off"]).delete()


@pytest.mark.committed_db
def test_serve_trust_remote_code_registers_a_servable_model(
    remote_dir, devtriton, model_configs, owner_key, django_db_blocker, tmp_path
):
    """The seed-style start-up (`serve` flags, what the image's TRUST_REMOTE_CODE sets)."""
    from llmgateway.models import ModelConfig
    from tests.conftest import ROOT, LiveGateway, _database_env, gateway_wait, stop_gateway

    port = free_port()
    command = [sys.executable, "manage.py", "serve", "--no-migrate", "--port", str(port)]
    command += ["--model-name", "tensorrt_llm", "--served-model-name", "remote-served"]
    command += ["--tokenizer-path", str(remote_dir), "--server-url", devtriton.grpc_url]
    command += ["--trust-remote-code"]
    log_path = tmp_path / "serve.log"
    env = {**os.environ, **_database_env(), "MODEL_CACHE_SECONDS": "0"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    server = LiveGateway(f"http://127.0.0.1:{port}", process, log_path, owner_key)
    try:
        gateway_wait(server, 30, "serve")
        with server.client() as http:
            answer = http.post(
                "/v1/chat/completions",
                json={
                    "model": "remote-served",
                    "messages": [{"role": "user", "content": "[[say:ok]]"}],
                },
            )
        assert answer.status_code == 200, answer.text + server.log_tail()
        assert answer.json()["choices"][0]["message"]["content"] == "ok"
        with django_db_blocker.unblock():
            assert ModelConfig.objects.get(name="remote-served").trust_remote_code
    finally:
        stop_gateway(server)
        with django_db_blocker.unblock():
            ModelConfig.objects.filter(name="remote-served").delete()
