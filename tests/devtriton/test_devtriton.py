"""The dev Triton: a real tritonserver running the scripted TensorRT-LLM model.

Driven with tritonclient directly, so these tests pin the wire behaviour the gateway's
Triton core relies on, independently of the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tokenizers import Tokenizer

from llmgateway.devtriton.server import TOKENIZER_DIR, DevTriton
from llmgateway.devtriton.stack import dev_triton

RECENT, V08 = "tensorrt_llm", "tensorrt_llm_v08"
TOK = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
IM_END = TOK.token_to_id("<|im_end|>")

DTYPES = {np.int32: "INT32", np.uint64: "UINT64", np.float32: "FP32", np.bool_: "BOOL"}


@pytest.fixture(scope="module")
def dev() -> Iterator[DevTriton]:
    with dev_triton(models={RECENT: "recent", V08: "0.8"}) as server:
        yield server


@pytest.fixture(scope="module")
def client(dev: DevTriton) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(dev.grpc_url) as triton:
        yield triton


def chat(user: str, system: str = "You are a helpful assistant") -> list[int]:
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return TOK.encode(text).ids


def per_char(text: str) -> list[int]:
    return [tok for char in text for tok in TOK.encode(char).ids]


def word_list(words: list[list[int]]) -> np.ndarray:
    flat = [tok for word in words for tok in word]
    offsets = np.cumsum([len(word) for word in words]).tolist()
    offsets += [-1] * (len(flat) - len(offsets))
    return np.array([[flat, offsets]], dtype=np.int32)


def tensor(name: str, value: Any, dtype: type = np.int32) -> grpcclient.InferInput:
    array = value if isinstance(value, np.ndarray) else np.array([[value]], dtype=dtype)
    item = grpcclient.InferInput(name, list(array.shape), DTYPES[array.dtype.type])
    item.set_data_from_numpy(array)
    return item


def build_inputs(prompt: list[int], max_tokens: int, **extra: Any) -> list[grpcclient.InferInput]:
    inputs = [
        tensor("input_ids", np.array([prompt], dtype=np.int32)),
        tensor("input_lengths", len(prompt)),
        tensor("request_output_len", max_tokens),
    ]
    for name, value in extra.items():
        if isinstance(value, str):  # TYPE_STRING [1]
            item = grpcclient.InferInput(name, [1, 1], "BYTES")
            item.set_data_from_numpy(np.array([[value.encode()]], dtype=np.object_))
            inputs.append(item)
        elif isinstance(value, np.ndarray):
            inputs.append(tensor(name, value))
        elif isinstance(value, bool):
            inputs.append(tensor(name, value, np.bool_))
        elif isinstance(value, float):
            inputs.append(tensor(name, value, np.float32))
        elif name in {"seed", "random_seed"}:
            inputs.append(tensor(name, value, np.uint64))
        else:
            inputs.append(tensor(name, value))
    return inputs


@dataclass
class Outcome:
    responses: list[dict[str, np.ndarray]] = field(default_factory=list)
    finals: list[bool] = field(default_factory=list)
    error: str | None = None

    def tokens(self, beam: int = 0) -> list[int]:
        out: list[int] = []
        for response in self.responses:
            length = int(response["sequence_length"][0][beam])
            out += response["output_ids"][0][beam][:length].tolist()
        return out


def generate(
    client: grpcclient.InferenceServerClient,
    prompt: list[int],
    max_tokens: int,
    *,
    model: str = RECENT,
    request_id: str | None = None,
    **extra: Any,
) -> Outcome:
    """One request on its own stream, collected until the final response or an error."""
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    outcome = Outcome()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        client.async_stream_infer(
            model,
            build_inputs(prompt, max_tokens, **extra),
            request_id=request_id or uuid.uuid4().hex,
            enable_empty_final_response=True,
        )
        while True:
            result, error = received.get(timeout=20)
            if error is not None:
                outcome.error = str(error)
                return outcome
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            if response.outputs:
                outcome.responses.append(
                    {o.name: result.as_numpy(o.name) for o in response.outputs}
                )
                outcome.finals.append(final)
            if final:
                return outcome
    finally:
        client.stop_stream()


def text_of(tokens: list[int]) -> str:
    return TOK.decode(tokens, skip_special_tokens=True)


# ---- default answer ------------------------------------------------------------------------


def test_default_answer_is_deterministic_and_depends_on_seed(
    client: grpcclient.InferenceServerClient,
) -> None:
    args = {"end_id": IM_END, "exclude_input_in_output": True}
    first = generate(client, chat("hello there"), 200, seed=7, **args).tokens()
    again = generate(client, chat("hello there"), 200, seed=7, **args).tokens()
    other = generate(client, chat("hello there"), 200, seed=8, **args).tokens()
    assert first == again
    assert first != other
    assert text_of(first).startswith("You said: hello there. ")
    assert 15 <= len(text_of(first).split()) <= 45


def test_who_are_you(client: grpcclient.InferenceServerClient) -> None:
    out = generate(client, chat("who are you?"), 200, end_id=IM_END, exclude_input_in_output=True)
    assert "dev Triton scripted model" in text_of(out.tokens())


def test_request_output_len_is_exact_and_end_id_comes_last(
    client: grpcclient.InferenceServerClient,
) -> None:
    args = {"exclude_input_in_output": True}
    short = generate(client, chat("hello"), 5, end_id=IM_END, **args).tokens()
    assert len(short) == 5 and IM_END not in short
    full = generate(client, chat("hello"), 200, end_id=IM_END, **args).tokens()
    assert full[-1] == IM_END and len(full) < 200 and full[:5] == short
    # Without an end id TRT-LLM never stops early; neither does the dev model.
    no_end = generate(client, chat("hello"), 120, **args).tokens()
    assert len(no_end) == 120 and no_end[: len(full) - 1] == full[:-1]


def test_min_tokens_delays_the_end_id(client: grpcclient.InferenceServerClient) -> None:
    out = generate(
        client, chat("[[say:hi]]"), 50, end_id=IM_END, min_tokens=10, exclude_input_in_output=True
    )
    tokens = out.tokens()
    assert len(tokens) == 11 and tokens[-1] == IM_END and text_of(tokens).startswith("hi")


# ---- streaming -----------------------------------------------------------------------------


def test_streaming_deltas_join_to_the_non_streaming_output(
    client: grpcclient.InferenceServerClient,
) -> None:
    prompt = chat("tell me something [[utf8]] and more")
    args = {"end_id": IM_END, "seed": 3}
    whole = generate(client, prompt, 100, exclude_input_in_output=True, **args)
    streamed = generate(client, prompt, 100, streaming=True, **args)
    assert len(whole.responses) == 1 and whole.finals == [True]
    assert all(r["output_ids"].shape == (1, 1, 1) for r in streamed.responses)
    assert all(r["sequence_length"].tolist() == [[1]] for r in streamed.responses)
    assert streamed.finals == [False] * (len(streamed.finals) - 1) + [True]
    assert streamed.tokens() == whole.tokens()
    echoed = generate(client, prompt, 100, **args).tokens()
    assert echoed == prompt + whole.tokens()


# ---- directives ----------------------------------------------------------------------------


def test_say_splits_multibyte_characters_across_tokens(
    client: grpcclient.InferenceServerClient,
) -> None:
    out = generate(client, chat("[[say:A你B]]"), 50, end_id=IM_END, exclude_input_in_output=True)
    tokens = out.tokens()
    assert tokens[-1] == IM_END
    assert text_of(tokens) == "A你B"
    cjk = tokens[1:-2]
    assert len(cjk) == 3
    assert all(TOK.decode([tok]) == "\ufffd" for tok in cjk)  # each alone is a partial UTF-8 byte


def test_utf8_directive(client: grpcclient.InferenceServerClient) -> None:
    out = generate(client, chat("[[utf8]]"), 200, end_id=IM_END, exclude_input_in_output=True)
    assert text_of(out.tokens()) == "Héllo 你好世界 👍🎉 naïve café 日本語 done"


def test_long_directive_gives_exactly_n_tokens(client: grpcclient.InferenceServerClient) -> None:
    tokens = generate(
        client, chat("[[long:37]]"), 100, end_id=IM_END, exclude_input_in_output=True
    ).tokens()
    assert len(tokens) == 38 and tokens[-1] == IM_END
    assert len(text_of(tokens).split()) > 10


def test_tool_directive_in_both_native_formats(client: grpcclient.InferenceServerClient) -> None:
    ask = 'weather? [[tool:get_weather:{"city": "Paris", "days": [[1, 2]]}]]'
    args = {"end_id": IM_END, "exclude_input_in_output": True}
    react = text_of(generate(client, chat(ask), 200, **args).tokens())
    assert react == (
        'Thought: I should call get_weather.\nAction: get_weather\nAction Input: {"city": "Paris", "days": [[1, 2]]}'
    )
    hermes_system = "You may call tools. Reply with <tool_call>...</tool_call>."
    hermes = text_of(generate(client, chat(ask, system=hermes_system), 200, **args).tokens())
    assert (
        hermes
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": [[1, 2]]}}\n</tool_call>'
    )


def test_delay_directive_slows_each_token(client: grpcclient.InferenceServerClient) -> None:
    started = time.monotonic()
    out = generate(client, chat("[[delay:30]][[say:abcd]]"), 50, end_id=IM_END, streaming=True)
    assert len(out.tokens()) == 5
    assert time.monotonic() - started >= 0.15


def test_error_directive_fails_after_k_tokens(
    dev: DevTriton, client: grpcclient.InferenceServerClient
) -> None:
    rid = uuid.uuid4().hex
    out = generate(
        client, chat("[[error:3]][[long:20]]"), 50, end_id=IM_END, streaming=True, request_id=rid
    )
    assert len(out.tokens()) == 3
    assert out.error is not None and "scripted failure after 3 tokens" in out.error
    finished = dev.wait_for_event("finished", rid)
    assert finished["reason"] == "error" and finished["tokens_sent"] == 3


# ---- stop words, beams, sequences ----------------------------------------------------------


def test_stop_words_list_stops_after_the_sequence(
    dev: DevTriton, client: grpcclient.InferenceServerClient
) -> None:
    rid = uuid.uuid4().hex
    stop = word_list([per_char("zzz"), per_char("three")])
    out = generate(
        client,
        chat("[[say:one two three four]]"),
        50,
        end_id=IM_END,
        stop_words_list=stop,
        exclude_input_in_output=True,
        request_id=rid,
    )
    assert text_of(out.tokens()) == "one two three"
    assert dev.wait_for_event("finished", rid)["reason"] == "stop_words"


def test_invalid_stop_words_list_is_an_error(client: grpcclient.InferenceServerClient) -> None:
    bad = np.array([[[5, 6, 7], [2, 1, -1]]], dtype=np.int32)  # offsets must increase
    out = generate(client, chat("hi"), 10, stop_words_list=bad)
    assert out.error is not None and "stop_words_list" in out.error


def test_beam_width_gives_distinct_padded_beams(client: grpcclient.InferenceServerClient) -> None:
    out = generate(
        client, chat("hello"), 200, end_id=IM_END, beam_width=3, exclude_input_in_output=True
    )
    (response,) = out.responses
    assert response["output_ids"].shape[:2] == (1, 3)
    assert response["sequence_length"].shape == (1, 3)
    beams = [tuple(out.tokens(beam)) for beam in range(3)]
    assert len(set(beams)) == 3
    assert beams[0] == tuple(
        generate(client, chat("hello"), 200, end_id=IM_END, exclude_input_in_output=True).tokens()
    )
    widest = response["output_ids"].shape[2]
    for beam, length in enumerate(response["sequence_length"][0]):
        assert (response["output_ids"][0][beam][length:] == -1).all() and length <= widest


def test_streaming_with_beams_is_rejected(client: grpcclient.InferenceServerClient) -> None:
    out = generate(client, chat("hello"), 20, beam_width=2, streaming=True)
    assert out.error is not None and "beam_width" in out.error


def test_num_return_sequences(client: grpcclient.InferenceServerClient) -> None:
    args = {"end_id": IM_END, "num_return_sequences": 3, "exclude_input_in_output": True}
    whole = generate(client, chat("[[say:same]]"), 100, **args)
    assert [int(r["sequence_index"][0][0]) for r in whole.responses] == [0, 1, 2]
    assert whole.finals == [False, False, True]
    texts = {text_of(r["output_ids"][0][0].tolist()) for r in whole.responses}
    assert len(texts) == 3
    streamed = generate(client, chat("[[say:same]]"), 100, streaming=True, **args)
    order = [int(r["sequence_index"][0][0]) for r in streamed.responses]
    assert order[:3] == [0, 1, 2]  # interleaved
    assert streamed.finals.count(True) == 1 and streamed.finals[-1]
    for index in range(3):
        mine = [
            int(r["output_ids"][0][0][0])
            for r in streamed.responses
            if int(r["sequence_index"][0][0]) == index
        ]
        assert mine == whole.responses[index]["output_ids"][0][0].tolist()


def test_log_probs_and_token_counts(client: grpcclient.InferenceServerClient) -> None:
    prompt = chat("[[say:abc]]")
    args = {
        "end_id": IM_END,
        "return_log_probs": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
    }
    (response,) = generate(client, prompt, 20, **args).responses
    assert response["output_log_probs"].shape == (1, 1, 4)
    assert (response["output_log_probs"] < 0).all()
    assert response["cum_log_probs"][0][0] == pytest.approx(
        response["output_log_probs"].sum(), rel=1e-5
    )
    assert int(response["num_input_tokens"][0][0]) == len(prompt)
    assert int(response["num_output_tokens"][0][0]) == len(prompt) + 4  # echoed prompt counts
    streamed = generate(client, prompt, 20, streaming=True, **args)
    assert [int(r["num_output_tokens"][0][0]) for r in streamed.responses] == [1, 1, 1, 1]
    # A token's logprob does not depend on how it is sent.
    one_by_one = [float(r["output_log_probs"].flat[0]) for r in streamed.responses]
    assert one_by_one == response["output_log_probs"].flatten().tolist()


# ---- the 0.8 interface ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["seed", "num_return_sequences", "exclude_input_in_output", "min_tokens"]
)
def test_v08_rejects_recent_inputs(client: grpcclient.InferenceServerClient, name: str) -> None:
    value: Any = True if name == "exclude_input_in_output" else 1
    out = generate(client, chat("hello"), 10, model=V08, **{name: value})
    assert out.error is not None and "unexpected inference input" in out.error


def test_v08_accepts_random_seed_and_echoes_the_prompt(
    client: grpcclient.InferenceServerClient,
) -> None:
    prompt = chat("hello")
    v08 = generate(
        client, prompt, 200, model=V08, end_id=IM_END, random_seed=7, min_length=1
    ).tokens()
    recent = generate(client, prompt, 200, end_id=IM_END, seed=7).tokens()
    assert v08[: len(prompt)] == prompt
    assert v08 == recent  # same seed value, same scripted answer


def test_recent_rejects_v08_inputs(client: grpcclient.InferenceServerClient) -> None:
    out = generate(client, chat("hello"), 10, random_seed=1)
    assert out.error is not None and "unexpected inference input" in out.error


# ---- cancellation and latency --------------------------------------------------------------


def test_cancelling_the_stream_stops_the_model(dev: DevTriton) -> None:
    rid = uuid.uuid4().hex

    async def scenario() -> int:
        async with aioclient.InferenceServerClient(dev.grpc_url) as triton:
            inputs = build_inputs(
                chat("[[delay:50]][[long:100]]"), 200, streaming=True, end_id=IM_END
            )

            async def requests() -> Any:
                yield {"model_name": RECENT, "inputs": inputs, "request_id": rid}

            stream = triton.stream_infer(inputs_iterator=requests())
            received = 0
            async for _result, error in stream:
                assert error is None
                received += 1
                if received == 2:
                    stream.cancel()
                    break
            return received

    assert asyncio.run(scenario()) == 2
    cancelled = dev.wait_for_event("cancelled", rid, timeout=5)
    assert cancelled["tokens_sent"] <= 4
    assert not any(e["event"] == "finished" and e["request_id"] == rid for e in dev.events())


def test_stop_input_cancels_a_running_request(
    dev: DevTriton, client: grpcclient.InferenceServerClient
) -> None:
    rid = uuid.uuid4().hex
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        slow = build_inputs(chat("[[delay:50]][[long:100]]"), 200, streaming=True)
        client.async_stream_infer(RECENT, slow, request_id=rid, enable_empty_final_response=True)
        received.get(timeout=10)
        control = build_inputs([0], 0, stop=True)
        client.async_stream_infer(RECENT, control, request_id=rid, enable_empty_final_response=True)
        assert dev.wait_for_event("cancelled", rid, timeout=5)["tokens_sent"] <= 4
    finally:
        client.stop_stream(cancel_requests=True)


def test_one_token_round_trip_is_fast(
    dev: DevTriton, client: grpcclient.InferenceServerClient
) -> None:
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    timings = []
    try:
        inputs = build_inputs(chat("hi"), 1, streaming=True, end_id=IM_END)
        for _ in range(20):
            started = time.perf_counter()
            client.async_stream_infer(RECENT, inputs, request_id=uuid.uuid4().hex)
            result, error = received.get(timeout=5)
            timings.append(time.perf_counter() - started)
            assert error is None and result.as_numpy("output_ids").shape == (1, 1, 1)
    finally:
        client.stop_stream()
    assert statistics.median(timings) < 0.050, timings


def test_a_slow_request_does_not_block_a_fast_one(
    dev: DevTriton, client: grpcclient.InferenceServerClient
) -> None:
    # A tritonclient sync client holds one stream at a time, so the slow request gets its own.
    with (
        grpcclient.InferenceServerClient(dev.grpc_url) as other,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        slow = pool.submit(generate, other, chat("[[delay:300]][[say:ab]]"), 10)
        time.sleep(0.1)
        started = time.monotonic()
        fast = generate(client, chat("[[say:x]]"), 5, end_id=IM_END)
        assert fast.error is None and time.monotonic() - started < 0.2
        assert slow.result(timeout=10).error is None


def test_bad_requests_are_errors_not_crashes(client: grpcclient.InferenceServerClient) -> None:
    out = generate(client, chat("hi"), -1)
    assert out.error is not None and "request_output_len" in out.error
    out = generate(client, chat("[[long:abc]]"), 5)
    assert out.error is not None and "integer" in out.error
    assert generate(client, chat("still alive"), 5).error is None


def test_events_are_recorded(dev: DevTriton, client: grpcclient.InferenceServerClient) -> None:
    rid = uuid.uuid4().hex
    prompt = chat("hello")
    generate(client, prompt, 3, request_id=rid)
    start = dev.wait_for_event("start", rid)
    assert start["prompt_tokens"] == len(prompt) and start["time"] > 0
    finished = dev.wait_for_event("finished", rid)
    assert (finished["tokens_sent"], finished["reason"]) == (3, "length")


def test_model_config_declares_the_generation(client: grpcclient.InferenceServerClient) -> None:
    recent = {i["name"] for i in client.get_model_config(RECENT, as_json=True)["config"]["input"]}
    v08 = {i["name"] for i in client.get_model_config(V08, as_json=True)["config"]["input"]}
    assert {"seed", "min_tokens", "num_return_sequences", "exclude_input_in_output"} <= recent
    assert {"random_seed", "min_length"} <= v08
    assert not {"seed", "min_tokens", "num_return_sequences", "exclude_input_in_output"} & v08


def test_model_never_logged_a_traceback(dev: DevTriton) -> None:
    """Runs after the tests above (file order): every failure they provoked was a clean response."""
    log = dev.log_path.read_text(errors="replace")
    assert "Traceback" not in log, dev.log_tail(60)


# ---- the committed tokenizer ---------------------------------------------------------------


def test_committed_tokenizer_loads_offline_with_transformers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]
    ids = tokenizer.convert_tokens_to_ids(specials)
    assert ids == list(range(ids[0], ids[0] + 6)) and ids[-1] == len(tokenizer) - 1
    for text in ["你", "好", "日本語", "👍", "🎉"]:
        pieces = tokenizer.encode(text, add_special_tokens=False)
        assert len(pieces) >= 2 * len(text), (text, pieces)
    sample = "Héllo 你好 👍 <|im_start|>user"
    assert tokenizer.decode(tokenizer.encode(sample)) == sample
    assert tokenizer.encode("hello world") == TOK.encode("hello world").ids


def test_committed_tokenizer_chat_template_is_chatml() -> None:
    pytest.importorskip("jinja2", reason="transformers needs jinja2 to render chat templates")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tokenize=False
    )
    assert with_system == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"


def test_committed_model_metadata() -> None:
    import json

    config = json.loads((TOKENIZER_DIR / "config.json").read_text())
    generation = json.loads((TOKENIZER_DIR / "generation_config.json").read_text())
    real = TOK.get_vocab_size(with_added_tokens=True)
    assert config["vocab_size"] % 64 == 0 and real <= config["vocab_size"] < real + 64
    assert config["hidden_size"] == 64
    endoftext, im_end = TOK.token_to_id("<|endoftext|>"), TOK.token_to_id("<|im_end|>")
    assert generation["eos_token_id"] == [im_end, endoftext]
    assert generation["bos_token_id"] == generation["pad_token_id"] == endoftext
    assert sum(p.stat().st_size for p in TOKENIZER_DIR.iterdir()) < 1_000_000


# ---- guided decoding (recent interface, guided_decoding_backend set) -----------------------

POINT = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "label": {"$ref": "#/$defs/Label"}},
    "required": ["x", "label"],
    "additionalProperties": False,
    "$defs": {"Label": {"enum": ["near", "far"]}},
}
GUIDED = {"end_id": IM_END, "exclude_input_in_output": True}


def held_to_point(client: grpcclient.InferenceServerClient, text: str) -> str:
    """The answer to `text` under the POINT schema's guide."""
    out = generate(
        client,
        chat(text),
        100,
        guided_decoding_guide_type="json_schema",
        guided_decoding_guide=json.dumps(POINT),
        seed=3,
        **GUIDED,
    )
    assert out.error is None, out.error
    return text_of(out.tokens())


def test_a_scripted_answer_that_fits_the_schema_is_kept(
    client: grpcclient.InferenceServerClient,
) -> None:
    answer = '{"x": 3, "label": "far"}'
    assert held_to_point(client, f"[[say:{answer}]]") == answer


@pytest.mark.parametrize(
    "answer",
    ["hello", '{"x": "3", "label": "far"}', '{"x": 3}', '{"x": 3, "label": "far", "y": 1}'],
)
def test_an_answer_off_the_schema_becomes_an_instance_of_it(
    client: grpcclient.InferenceServerClient, answer: str
) -> None:
    value = json.loads(held_to_point(client, f"[[say:{answer}]]"))
    assert set(value) == {"x", "label"}
    assert isinstance(value["x"], int) and value["label"] == "near"


def test_a_json_guide_answers_json(client: grpcclient.InferenceServerClient) -> None:
    answer = '{"a": [1, 2]}'
    kept = generate(
        client, chat(f"[[say:{answer}]]"), 50, guided_decoding_guide_type="json", **GUIDED
    )
    assert text_of(kept.tokens()) == answer
    made = generate(client, chat("hi"), 100, guided_decoding_guide_type="json", **GUIDED)
    assert isinstance(json.loads(text_of(made.tokens())), dict)


@pytest.mark.parametrize(
    ("guide", "error"),
    [
        ({"guided_decoding_guide_type": "yaml"}, "unknown guided_decoding_guide_type"),
        ({"guided_decoding_guide_type": "json_schema"}, "needs guided_decoding_guide"),
        (
            {"guided_decoding_guide_type": "json_schema", "guided_decoding_guide": "{"},
            "not a JSON schema",
        ),
        (
            {"guided_decoding_guide_type": "regex", "guided_decoding_guide": "[0-9]+"},
            "json and json_schema only",
        ),
    ],
)
def test_a_bad_guide_is_an_error_response(
    client: grpcclient.InferenceServerClient, guide: dict[str, str], error: str
) -> None:
    out = generate(client, chat("hi"), 10, **guide, **GUIDED)
    assert out.error is not None and error in out.error


def test_v08_has_no_guided_decoding_inputs(client: grpcclient.InferenceServerClient) -> None:
    out = generate(
        client, chat("hi"), 10, model=V08, guided_decoding_guide_type="json", end_id=IM_END
    )
    assert out.error is not None and "unexpected inference input" in out.error


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_server_leaves_no_backend_stubs_behind(tmp_path: Path) -> None:
    """tritonserver's Python stubs outlive a SIGKILLed server (and spin); stop() ends them."""
    server = dev_triton(models={"tensorrt_llm": "recent"}, state_dir=tmp_path).start()
    pgid = server.process.pid
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    stubs_left = _group_alive(pgid)  # the stub is still there, in the server's group
    server.stop()
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stubs_left, "expected the stub to outlive the killed server (what stop() mends)"
    assert not _group_alive(pgid)
