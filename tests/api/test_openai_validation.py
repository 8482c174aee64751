"""Request validation on /v1 answered as OpenAI answers it: status, message, param, code.

Raw httpx (`http`) where the wire matters: the official client cannot send most of
these bodies. Messages quoted from OpenAI are OpenAI's, typos included.
"""

from __future__ import annotations

import pytest

from tests.api.test_openai_conformance import user
from tests.conftest import CHAT_MODEL

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
PATHS = [CHAT, COMPLETIONS]
BODY_UNPARSEABLE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)


def chat_body(**fields) -> dict:
    return {"model": CHAT_MODEL, "messages": user("hi"), "max_tokens": 2, **fields}


def completion_body(**fields) -> dict:
    return {"model": CHAT_MODEL, "prompt": "hi", "max_tokens": 2, **fields}


def refused(response) -> dict:
    """The error of a 400 in OpenAI's envelope."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


# ---- errors name the request's fields, in OpenAI's words --------------------------------


def test_a_union_field_error_names_the_field_not_a_union_member(http):
    error = refused(http.post(CHAT, json=chat_body(messages=user(5))))
    assert error["param"] == "messages[0].content"
    assert error["message"] == (
        "Invalid type for 'messages[0].content': expected one of a string or an array, "
        "but got an integer instead."
    )
    assert error["code"] == "invalid_type"


def test_an_error_inside_a_union_member_names_the_part(http):
    error = refused(http.post(CHAT, json=chat_body(messages=user([{"text": "a"}]))))
    assert error["param"] == "messages[0].content[0].type"
    assert error["message"] == "Missing required parameter: 'messages[0].content[0].type'."
    assert error["code"] == "missing_required_parameter"


@pytest.mark.parametrize("path", PATHS)
def test_a_missing_required_field_uses_openais_wording(http, path):
    body = chat_body() if path == CHAT else completion_body()
    del body["model"]
    error = refused(http.post(path, json=body))
    assert error["param"] == "model"
    assert error["message"] == "Missing required parameter: 'model'."
    assert error["code"] == "missing_required_parameter"


def test_a_nested_object_of_the_wrong_type_names_no_class(http):
    error = refused(http.post(CHAT, json=chat_body(stream=True, stream_options="yes")))
    assert error["param"] == "stream_options"
    assert error["message"] == (
        "Invalid type for 'stream_options': expected an object, but got a string instead."
    )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("content", "got"), [(b"[]", "an array"), (b'"hi"', "a string"), (b"null", "null")]
)
def test_a_body_that_is_no_json_object_is_refused_in_plain_words(http, path, content, got):
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    error = refused(response)
    assert error["param"] is None
    assert error["message"] == (
        f"Invalid request body: expected a JSON object, but got {got} instead."
    )


@pytest.mark.parametrize("path", [*PATHS, "/generate"])
@pytest.mark.parametrize("content", [b"", b"  ", b"{not json", b'{"model": '])
def test_an_empty_or_malformed_body_gets_openais_parse_message(http, path, content):
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    error = refused(response)
    assert error["message"] == BODY_UNPARSEABLE
    assert error["param"] is None


@pytest.mark.parametrize("path", PATHS)
def test_a_wrong_content_type_is_named(http, path):
    response = http.post(path, content=b"{}", headers={"content-type": "text/plain"})
    error = refused(response)
    assert "text/plain" in error["message"] and "application/json" in error["message"]


# ---- JSON types are checked, not coerced ------------------------------------------------

TYPE_CASES = [
    (CHAT, "stream", "yes", "a boolean", "a string"),
    (CHAT, "stream", 1, "a boolean", "an integer"),
    (CHAT, "max_tokens", "2", "an integer", "a string"),
    (CHAT, "max_tokens", 2.0, "an integer", "a decimal number"),
    (CHAT, "temperature", True, "a decimal", "a boolean"),
    (CHAT, "temperature", "0.5", "a decimal", "a string"),
    (CHAT, "logprobs", 1, "a boolean", "an integer"),
    (CHAT, "seed", 1.5, "an integer", "a decimal number"),
    (CHAT, "n", "2", "an integer", "a string"),
    (CHAT, "user", {"a": 1}, "a string", "an object"),
    (COMPLETIONS, "echo", "true", "a boolean", "a string"),
    (COMPLETIONS, "stream", "yes", "a boolean", "a string"),
    (COMPLETIONS, "max_tokens", "2", "an integer", "a string"),
]


@pytest.mark.parametrize(("path", "field", "value", "expected", "got"), TYPE_CASES)
def test_a_wrong_json_type_is_refused_not_coerced(http, path, field, value, expected, got):
    body = chat_body if path == CHAT else completion_body
    error = refused(http.post(path, json=body(**{field: value})))
    assert error["param"] == field
    assert error["code"] == "invalid_type"
    assert error["message"] == (
        f"Invalid type for '{field}': expected {expected}, but got {got} instead."
    )


def test_a_wrong_type_deep_in_a_message_names_it(http):
    messages = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    error = refused(http.post(CHAT, json=chat_body(messages=messages)))
    assert error["param"] == "messages[0].content[0].text"
    assert error["message"] == (
        "Invalid type for 'messages[0].content[0].text': expected a string, "
        "but got an integer instead."
    )


@pytest.mark.parametrize("path", PATHS)
def test_integers_are_numbers(http, path):
    """JSON has one number type: 1 is a valid temperature, as OpenAI takes it."""
    body = chat_body if path == CHAT else completion_body
    fields = {"temperature": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": -1}
    response = http.post(path, json=body(**fields))
    assert response.status_code == 200, response.text


def test_generate_keeps_coercing_as_the_seed_did(http):
    """/generate is the seed's own API (a FastAPI app's lenient parsing), not OpenAI's."""
    body = {"model": CHAT_MODEL, "prompt": "[[say:ok]]", "max_output_len": "8"}
    response = http.post("/generate", json={**body, "temperature": "0.5", "stream": "false"})
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "ok"


# ---- null means the default -------------------------------------------------------------


def _schemas(base: type) -> list[type]:
    return [c for sub in base.__subclasses__() for c in (sub, *_schemas(sub))]


def test_null_is_the_default_for_every_field_that_has_one():
    from pydantic import ValidationError
    from pydantic_core import PydanticUndefined

    from llmgateway.api.openai_schemas import OpenAISchema

    checked = 0
    for schema in _schemas(OpenAISchema):
        for name, field in schema.model_fields.items():
            if field.default is None or field.default is PydanticUndefined:
                continue
            checked += 1
            try:  # other fields may be missing: only errors about this one count
                assert getattr(schema.model_validate({name: None}), name) == field.default
            except ValidationError as exc:
                assert not [e for e in exc.errors() if e["loc"][0] == name], (schema, name)
    assert checked >= 6  # n, stream, logprobs, echo, include_usage, tool call type, ...


def test_null_fields_validate_as_their_defaults():
    from llmgateway.api.openai_schemas import ChatCompletionIn

    payload = ChatCompletionIn.model_validate(
        {
            **chat_body(),
            "n": None,
            "stream": None,
            "logprobs": None,
            "stream_options": {"include_usage": None},
        }
    )
    assert (payload.n, payload.stream, payload.logprobs) == (1, False, False)
    assert payload.stream_options.include_usage is False


@pytest.mark.parametrize("path", PATHS)
def test_null_n_is_one_choice(http, path):
    body = chat_body if path == CHAT else completion_body
    response = http.post(path, json=body(n=None))
    assert response.status_code == 200, response.text
    assert [c["index"] for c in response.json()["choices"]] == [0]


def test_null_echo_does_not_echo(http):
    response = http.post(COMPLETIONS, json=completion_body(prompt="[[say:ok]]", echo=None))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == "ok"


@pytest.mark.parametrize("path", PATHS)
def test_null_include_usage_sends_no_usage(http, path):
    body = chat_body if path == CHAT else completion_body
    response = http.post(path, json=body(stream=True, stream_options={"include_usage": None}))
    assert response.status_code == 200, response.text
    assert '"usage"' not in response.text and response.text.endswith("data: [DONE]\n\n")


def test_null_stays_refused_where_the_field_is_required(http):
    error = refused(http.post(CHAT, json=chat_body(model=None)))
    assert error["param"] == "model"
    assert error["message"] == "Invalid type for 'model': expected a string, but got null instead."
    error = refused(http.post(CHAT, json=chat_body(n="2")))
    assert (
        error["message"] == "Invalid type for 'n': expected an integer, but got a string instead."
    )


# ---- content parts ----------------------------------------------------------------------


def _with_assistant(content) -> list[dict]:
    return [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": "[[say:b]]"},
    ]


def _prompt_tokens(http, messages) -> int:
    response = http.post(CHAT, json=chat_body(messages=messages))
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("parts", "as_text"),
    [
        ([{"type": "refusal", "refusal": "no"}], "no"),
        ([{"type": "text", "text": "well"}, {"type": "refusal", "refusal": "no"}], "well\nno"),
        # Control tokens in a refusal are text, as in any content (TextModel.quote).
        ([{"type": "refusal", "refusal": "no <|im_end|>"}], "no <|im_end|>"),
    ],
)
def test_an_assistant_refusal_part_renders_as_its_text(http, parts, as_text):
    refusal = _prompt_tokens(http, _with_assistant(parts))
    assert refusal == _prompt_tokens(http, _with_assistant([{"type": "text", "text": as_text}]))
    assert refusal == _prompt_tokens(http, _with_assistant(as_text))


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (user([{"type": "text"}]), "messages[0].content[0].text"),
        (user([{"type": "text", "text": None}]), "messages[0].content[0].text"),
        (_with_assistant([{"type": "refusal"}]), "messages[1].content[0].refusal"),
    ],
)
def test_a_part_without_its_text_names_the_missing_field(http, messages, param):
    error = refused(http.post(CHAT, json=chat_body(messages=messages)))
    assert error["param"] == param
    assert error["message"] == f"Missing required parameter: '{param}'."


def test_a_refusal_part_outside_an_assistant_message_is_refused(http):
    messages = user([{"type": "refusal", "refusal": "no"}])
    error = refused(http.post(CHAT, json=chat_body(messages=messages)))
    assert error["param"] == "messages[0].content[0]"
    assert "'refusal'" in error["message"]


# ---- message sequences ------------------------------------------------------------------

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
ASKS = {"role": "assistant", "content": None, "tool_calls": [CALL]}
ANSWER = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
ORPHAN = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
    "message with 'tool_calls'."
)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [{"role": "user", "content": "a"}, {"role": "tool", "content": "sunny"}],
            "messages[1].tool_call_id",
        ),
        (
            [{"role": "user", "content": "a"}, ASKS, {"role": "tool", "content": "sunny"}],
            "messages[2].tool_call_id",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": None, "function_call": CALL["function"]},
                {"role": "function", "content": "sunny"},
            ],
            "messages[2].name",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "f"}}],
                },
                ANSWER,
            ],
            "messages[1].tool_calls[0].id",
        ),
    ],
)
def test_a_message_missing_a_field_its_role_needs_is_refused(http, messages, param):
    error = refused(http.post(CHAT, json=chat_body(messages=messages)))
    assert error["param"] == param
    assert error["message"] == f"Missing required parameter: '{param}'."
    assert error["code"] == "missing_required_parameter"


@pytest.mark.parametrize(
    ("messages", "index"),
    [
        ([{"role": "user", "content": "a"}, ANSWER], 1),
        ([ANSWER, {"role": "user", "content": "a"}], 0),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, ANSWER], 2),
        (
            [
                {"role": "user", "content": "a"},
                ASKS,
                ANSWER,
                {"role": "user", "content": "c"},
                ANSWER,
            ],
            4,
        ),
    ],
)
def test_a_tool_message_must_answer_tool_calls(http, messages, index):
    error = refused(http.post(CHAT, json=chat_body(messages=messages)))
    # OpenAI's sequence checks write the index as ".[i]", unlike its schema errors.
    assert error["param"] == f"messages.[{index}].role"
    assert error["message"] == ORPHAN
    assert error["code"] is None


@pytest.mark.parametrize(
    ("messages", "index"),
    [
        ([{"role": "user", "content": "a"}, ASKS, {**ANSWER, "tool_call_id": "call_9"}], 2),
        (
            [
                {"role": "user", "content": "a"},
                {**ASKS, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
                ANSWER,
                {**ANSWER, "tool_call_id": "call_3"},
            ],
            3,
        ),
        # An answer belongs to the assistant message right before it, not an earlier one.
        (
            [
                {"role": "user", "content": "a"},
                ASKS,
                ANSWER,
                {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": "call_2"}]},
                ANSWER,
            ],
            4,
        ),
    ],
)
def test_a_tool_message_must_answer_one_of_the_calls_it_follows(http, messages, index):
    error = refused(http.post(CHAT, json=chat_body(messages=messages)))
    call_id = messages[index]["tool_call_id"]
    assert error["param"] == f"messages.[{index}].tool_call_id"
    assert error["message"] == (
        f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in 'tool_calls' of "
        "previous message."
    )
    assert error["code"] is None


@pytest.mark.parametrize(
    ("messages", "index", "ids"),
    [
        # Followed by another message before every call was answered.
        (
            [
                {"role": "user", "content": "a"},
                {**ASKS, "tool_calls": [CALL, {**CALL, "id": "call_2"}, {**CALL, "id": "c3"}]},
                {**ANSWER, "tool_call_id": "call_2"},
                {"role": "user", "content": "b"},
            ],
            1,
            "call_1, c3",
        ),
        ([{"role": "user", "content": "a"}, ASKS, {"role": "user", "content": "b"}], 1, "call_1"),
        # The conversation ends before the answers.
        ([{"role": "user", "content": "a"}, ASKS], 1, "call_1"),
    ],
)
def test_every_tool_call_must_be_answered(http, messages, index, ids):
    error = refused(http.post(CHAT, json=chat_body(messages=messages)))
    assert error["param"] == f"messages.[{index}].role"
    assert error["message"] == (
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response "
        f"messages: {ids}"
    )
    assert error["code"] is None


def test_tool_messages_answering_tool_calls_are_accepted(http):
    two = {**ASKS, "tool_calls": [CALL, {**CALL, "id": "call_2"}]}
    messages = [
        {"role": "user", "content": "a"},
        two,
        ANSWER,
        {**ANSWER, "tool_call_id": "call_2"},
        {"role": "user", "content": "[[say:ok]]"},
    ]
    response = http.post(CHAT, json=chat_body(messages=messages, max_tokens=8))
    assert response.status_code == 200, response.text


# ---- top_p 0 ----------------------------------------------------------------------------


def test_top_p_zero_is_greedy_decoding():
    """A nucleus of probability mass 0 is the single most likely token: TensorRT-LLM is
    sent top_k 1 and no top_p (it wants top_p in (0, 1]), whatever the model's defaults."""
    from llmgateway.api.openai_common import params_build
    from llmgateway.api.openai_schemas import ChatCompletionIn
    from llmgateway.models import ModelConfig

    config = ModelConfig(default_top_p=0.8, default_top_k=40, default_temperature=0.7)
    for extra in ({}, {"top_k": 5}):
        payload = ChatCompletionIn.model_validate(chat_body(top_p=0, **extra))
        params = params_build(payload, config=config, max_tokens=2)
        assert (params.top_p, params.top_k) == (None, 1)
    kept = params_build(
        ChatCompletionIn.model_validate(chat_body(top_p=0.5)), config=config, max_tokens=2
    )
    assert (kept.top_p, kept.top_k) == (0.5, 40)


@pytest.mark.parametrize("path", PATHS)
def test_top_p_zero_is_accepted_and_answers_as_top_k_one(http, path):
    body = chat_body if path == CHAT else completion_body
    prompt = {"messages": user("write me a sentence")} if path == CHAT else {}
    greedy = http.post(path, json=body(top_p=0, seed=3, max_tokens=12, **prompt))
    assert greedy.status_code == 200, greedy.text
    top_k_1 = http.post(path, json=body(top_k=1, seed=3, max_tokens=12, **prompt))
    choice = "message" if path == CHAT else "text"
    assert greedy.json()["choices"][0][choice] == top_k_1.json()["choices"][0][choice]


@pytest.mark.parametrize("top_p", [-0.1, 1.5])
def test_top_p_outside_zero_to_one_is_refused(http, top_p):
    error = refused(http.post(CHAT, json=chat_body(top_p=top_p)))
    assert error["param"] == "top_p"
