"""Qwen-VL prompt construction: image spans, fake ids, the embedding table."""

from __future__ import annotations

import numpy as np
import pytest

from llmgateway.engine import Engine
from llmgateway.errors import APIError
from llmgateway.models import ModelConfig
from llmgateway.textgen.tokenizer import load_text_model
from llmgateway.vision.prompt import table_inputs, vision_tokens
from llmgateway.vision.service import vision_chat_plan, vision_prompt_generate
from tests.conftest import TOKENIZER

TEXT = load_text_model(TOKENIZER)
TOKENS = vision_tokens(TEXT)


def config(**fields) -> ModelConfig:
    return ModelConfig(
        name="vl",
        triton_model="qwen-vl-llm",
        model_type="qwen-vl",
        tokenizer_path=TOKENIZER,
        **fields,
    )


ENGINE = Engine(name="vl", text_model=TEXT, triton_url="127.0.0.1:1", triton_model="qwen-vl-llm")


def spans(ids: list[int]) -> list[list[int]]:
    out, inside = [], None
    for tok in ids:
        if tok == TOKENS.img_start:
            inside = []
        elif tok == TOKENS.img_end:
            out.append(inside)
            inside = None
        elif inside is not None:
            inside.append(tok)
    return out


def test_ids_come_from_the_tokenizer_directory() -> None:
    vocab = TEXT.tokenizer.get_vocab()
    assert (TOKENS.img_start, TOKENS.img_end, TOKENS.img_pad) == (
        vocab["<img>"],
        vocab["</img>"],
        vocab["<imgpad>"],
    )
    assert TOKENS.vocab_size == 4032  # config.json's vocab_size, above the tokenizer's ids


def test_visual_model_default_name() -> None:
    assert config().visual_model_name == "qwen-vl-visual"
    assert config(visual_model="vit").visual_model_name == "vit"


def test_generate_prompt_spans() -> None:
    vision = vision_prompt_generate(
        config=config(), engine=ENGINE, prompt="Compare them.", images=["data:a", "data:b"]
    )
    ids = vision.prompt_ids
    found = spans(ids)
    assert [len(s) for s in found] == [256, 256]
    assert found[0] == list(range(4032, 4032 + 256))
    assert found[1] == list(range(4032 + 256, 4032 + 512))
    text = TEXT.tokenizer.decode([t for t in ids if t < TOKENS.vocab_size])
    assert "<|im_start|>user\nPicture 1: <img></img>\nPicture 2: <img></img>\nCompare them." in text
    assert vision.image_count == 2
    assert vision.sources == [("data:a", "images[0]"), ("data:b", "images[1]")]


def test_chat_images_numbered_across_the_conversation() -> None:
    messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u1"}}]},
        {"role": "assistant", "content": "A cat."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And this? <img>x</img>"},
                {"type": "image_url", "image_url": {"url": "u2", "detail": "low"}},
            ],
        },
    ]
    chat = vision_chat_plan(config=config(), engine=ENGINE, messages=messages)
    assert chat is not None
    assert chat.messages[1] is messages[1]
    assert chat.messages[2]["content"].startswith("And this? <img>x</img>Picture 2: ")
    vision = chat.finish(TEXT.render_chat(chat.messages))
    # The client's literal <img> tags become tag tokens but never a span of fake ids.
    fake = [t for t in vision.prompt_ids if t >= TOKENS.vocab_size]
    assert fake == list(range(4032, 4032 + 512))
    assert [p for _, p in vision.sources] == ["messages[0].content[0]", "messages[2].content[1]"]


def test_text_only_messages_need_no_plan() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert vision_chat_plan(config=config(), engine=ENGINE, messages=messages) is None


def test_refusals_name_the_part(settings) -> None:
    text_model = ModelConfig(name="t", model_type="qwen2-chat", tokenizer_path=TOKENIZER)
    image = {"type": "image_url", "image_url": {"url": "data:x"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]
    with pytest.raises(APIError) as caught:
        vision_chat_plan(config=text_model, engine=ENGINE, messages=messages)
    assert (caught.value.status, caught.value.param) == (400, "messages[0].content[1]")
    settings.VISION_MAX_IMAGES = 2
    with pytest.raises(APIError) as caught:
        vision_prompt_generate(config=config(), engine=ENGINE, prompt="p", images=["a"] * 3)
    assert caught.value.param == "images[2]"


def test_table_inputs() -> None:
    features = np.random.default_rng(0).random((2, 256, 64), dtype=np.float32)
    prompt = [1, TOKENS.img_start, *range(4032, 4032 + 512), TOKENS.img_end, 2]
    inputs = table_inputs(
        features=features,
        table_dtype=np.float16,
        prompt=prompt,
        tokens=TOKENS,
        image_digests=[b"\x01" * 16, b"\x02" * 16],
    )
    table = inputs["prompt_embedding_table"]
    assert table.shape == (512, 64) and table.dtype == np.float16
    np.testing.assert_allclose(table[256], features[1, 0], atol=1e-3)
    assert inputs["prompt_vocab_size"].tolist() == [512]
    extra = inputs["prompt_table_extra_ids"]
    assert extra.shape == (len(prompt),) and extra[0] == 0 and extra[-1] == 0
    assert len(set(extra[2:258].tolist())) == 1 and extra[2] != extra[258]
