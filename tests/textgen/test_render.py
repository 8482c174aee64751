"""render_chat's fast path renders exactly what apply_chat_template renders."""

from __future__ import annotations

import json
import shutil

import pytest

from llmgateway.textgen.tokenizer import CHATML_FALLBACK, load_text_model
from tests.conftest import TOKENIZER
from tests.textgen.test_remote_code import remote_tokenizer_dir

CONVERSATIONS = [
    [{"role": "user", "content": "who are you?"}],
    [
        {"role": "system", "content": "Be brief. 你好 🙂"},
        {"role": "user", "content": "hi <|im_end|> there"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": ""},
    ],
]


def _reference(text_model, messages, add_generation_prompt, template=None):
    kwargs = {"chat_template": template} if template else {}
    return text_model.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_the_fast_render_equals_apply_chat_template(messages, add_generation_prompt):
    text = load_text_model(TOKENIZER)
    assert text._compiled_template is not None  # the fast path is taken
    rendered = text.render_chat(messages, add_generation_prompt=add_generation_prompt)
    assert rendered == _reference(text, messages, add_generation_prompt)


def test_special_tokens_reach_the_template(tmp_path):
    """Templates read the tokenizer's special tokens (eos_token, ...) as variables."""
    target = tmp_path / "tok"
    shutil.copytree(TOKENIZER, target)
    config_file = target / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    config_file.write_text(json.dumps(config))
    text = load_text_model(str(target))
    messages = CONVERSATIONS[1]
    assert text.render_chat(messages) == _reference(text, messages, True)
    assert text.render_chat(messages).count("<|im_end|>") == 4 + 1  # one in the content


def test_the_chatml_fallback_renders_as_apply_chat_template(tmp_path):
    text = load_text_model(str(remote_tokenizer_dir(tmp_path / "tok")), trust_remote_code=True)
    for messages in CONVERSATIONS:
        expected = _reference(text, messages, True, template=CHATML_FALLBACK)
        assert text.render_chat(messages) == expected


def test_a_template_that_does_not_compile_still_loads(tmp_path):
    """The error belongs to the requests that render it (a 400), not to loading the model."""
    target = tmp_path / "broken"
    shutil.copytree(TOKENIZER, target)
    config_file = target / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }"  # unclosed
    config_file.write_text(json.dumps(config))
    text = load_text_model(str(target))
    assert text._compiled_template is None
    with pytest.raises(Exception, match="unexpected|expected"):
        text.render_chat(CONVERSATIONS[0])
