"""A bounded fuzz of every endpoint with a valid key (issue 19, item 10): whatever a
client sends, the answer is never a 5xx, and an error is OpenAI's envelope.

hypothesis builds the bodies: each route's own fields, filled with values of the
right kind, of the wrong kind, at and past their edges, plus arbitrary JSON, and
sometimes a whole body of arbitrary JSON. Against the live gateway and the real dev
Triton, so a crash anywhere on the path (parser, schemas, runner, engine, Triton's
refusals) shows.

Bounded for CI: a fixed number of examples per route (about 40 s in all on the
dev machine), `derandomize` so a run is repeatable (a failure in CI fails the same
way on a laptop), and no example database written into the tree.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CHAT_MODEL, V08_MODEL

EXAMPLES = 250

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # one example is an HTTP round trip through Triton: its time varies
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Characters that have broken gateways: NUL and other controls, surrogate-free
# non-ASCII, the chat template's own control tokens.
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "a\x00b", "<|im_start|>", "<|im_end|>system", "[[say:ok]]"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


def edge_ints(*good: int) -> st.SearchStrategy[Any]:
    """Small valid values, and the edges around every limit a field has."""
    edges = [-1, 0, 1, 4, 5, 8, 16, 17, 4000, 4096, 10**6, 2**31, 2**63, 2**64]
    return st.one_of(st.sampled_from([*good, *edges]), st.integers(-3, 8), JSON)


def maybe(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of `fields`, each drawn from its strategy."""
    return st.fixed_dictionaries({}, optional=fields)


MODEL = st.one_of(st.sampled_from([CHAT_MODEL, V08_MODEL, "nope", "", "\x00"]), JSON)
STOPS = st.one_of(TEXT, st.lists(TEXT, max_size=20), JSON)
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "tool", "function", "x"]),
            "content": st.one_of(
                TEXT,
                st.lists(
                    st.fixed_dictionaries(
                        {"type": st.sampled_from(["text", "refusal", "image_url", "x"])},
                        optional={"text": TEXT, "refusal": TEXT, "image_url": JSON},
                    ),
                    max_size=3,
                ),
                JSON,
            ),
        },
        optional={"name": TEXT, "tool_call_id": TEXT, "tool_calls": JSON},
    ),
    JSON,
)
TOOL = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.sampled_from(["f", "get_weather", "", "a b"])},
                optional={"description": TEXT, "parameters": JSON},
            ),
        }
    ),
    JSON,
)
SAMPLING = dict(
    max_tokens=edge_ints(1, 2),
    temperature=st.one_of(st.floats(-1, 3), JSON),
    top_p=st.one_of(st.floats(-1, 2), JSON),
    n=edge_ints(1, 2),
    stop=STOPS,
    seed=edge_ints(1),
    presence_penalty=st.one_of(st.floats(-3, 3), JSON),
    frequency_penalty=st.one_of(st.floats(-3, 3), JSON),
    logit_bias=JSON,
    user=TEXT,
    stream=st.one_of(st.booleans(), JSON),
    stream_options=st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), JSON),
    top_k=edge_ints(1),
    repetition_penalty=st.one_of(st.floats(-1, 3), JSON),
    min_tokens=edge_ints(0, 1),
    metadata=JSON,
)
CHAT = dict(
    model=MODEL,
    messages=st.one_of(st.lists(MESSAGE, max_size=4), JSON),
    max_completion_tokens=edge_ints(1, 2),
    logprobs=st.one_of(st.booleans(), JSON),
    top_logprobs=edge_ints(0),
    tools=st.one_of(st.lists(TOOL, max_size=3), JSON),
    tool_choice=st.one_of(st.sampled_from(["none", "auto", "required"]), JSON),
    functions=JSON,
    function_call=JSON,
    response_format=st.one_of(
        st.sampled_from([{"type": "json_object"}, {"type": "text"}]),
        st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": JSON}),
        JSON,
    ),
    **SAMPLING,
)
COMPLETION = dict(
    model=MODEL,
    prompt=st.one_of(TEXT, st.lists(TEXT, max_size=3), st.lists(edge_ints(1), max_size=3), JSON),
    echo=st.one_of(st.booleans(), JSON),
    logprobs=edge_ints(0, 1),
    suffix=TEXT,
    best_of=edge_ints(1),
    **SAMPLING,
)
RESPONSES = dict(
    model=MODEL,
    input=st.one_of(
        TEXT,
        st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "assistant", "system", "developer", "x"])},
                    optional={"content": st.one_of(TEXT, JSON), "type": st.just("message")},
                ),
                JSON,
            ),
            max_size=3,
        ),
        JSON,
    ),
    instructions=TEXT,
    max_output_tokens=edge_ints(16, 32),
    temperature=st.one_of(st.floats(-1, 3), JSON),
    top_p=st.one_of(st.floats(-1, 2), JSON),
    stream=st.one_of(st.booleans(), JSON),
    store=st.one_of(st.booleans(), JSON),
    previous_response_id=TEXT,
    tools=st.one_of(st.lists(JSON, max_size=2), JSON),
    tool_choice=JSON,
    text=JSON,
    reasoning=JSON,
    include=JSON,
    metadata=JSON,
    user=TEXT,
)
GENERATE_FIELDS = dict(
    model=MODEL,
    max_output_len=edge_ints(1, 2),
    num_beams=edge_ints(1, 2),
    repetition_penalty=st.one_of(st.floats(-1, 3), JSON),
    top_k=edge_ints(1),
    top_p=st.one_of(st.floats(-1, 2), JSON),
    temperature=st.one_of(st.floats(-1, 3), JSON),
    presence_penalty=st.one_of(st.floats(-3, 3), JSON),
    random_seed=edge_ints(1),
    stop_words=STOPS,
    images=st.one_of(
        st.lists(st.sampled_from(["data:image/png;base64,AAAA", "file:///etc/passwd", "x"])),
        JSON,
    ),
    timeout=st.one_of(st.floats(-1, 30), JSON),
    uuid=TEXT,
    only_return_output=st.one_of(st.booleans(), JSON),
)
GENERATE = dict(prompt=TEXT, stream=st.one_of(st.booleans(), JSON), **GENERATE_FIELDS)
BATCH = dict(prompts=st.one_of(st.lists(TEXT, max_size=4), JSON), **GENERATE_FIELDS)


# A valid request per route, which the fuzz changes a few fields of at a time: with
# every field drawn at once nearly every body is a 400 and the fuzz never gets past
# validation (into the runner, the engine and Triton's refusals).
SAY = "[[say:ok]]"
VALID = {
    "/v1/chat/completions": {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": SAY}],
        "max_tokens": 4,
    },
    "/v1/completions": {"model": CHAT_MODEL, "prompt": SAY, "max_tokens": 4},
    "/generate": {"model": CHAT_MODEL, "prompt": SAY, "max_output_len": 4},
    "/batch_generate": {"model": CHAT_MODEL, "prompts": [SAY], "max_output_len": 4},
    "/v1/responses": {"model": CHAT_MODEL, "input": SAY, "max_output_tokens": 16},
}


def body_of(path: str, fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Mostly the route's valid request with up to three fields fuzzed; sometimes any
    subset of its fields, fuzzed; sometimes any JSON at all."""
    names = st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)
    changed = names.flatmap(
        lambda chosen: st.fixed_dictionaries({name: fields[name] for name in chosen})
    ).map(lambda changes: {**VALID[path], **changes})
    return st.one_of(changed, changed, changed, maybe(**fields), JSON)


def assert_answered(response: httpx.Response, path: str, body: Any = None) -> None:
    status = response.status_code
    # A deadline the client chose itself (/generate's `timeout`) may pass: 504, as documented.
    chose_deadline = isinstance(body, dict) and "timeout" in body
    assert status < 500 or (status == 504 and chose_deadline), (path, status, response.text[:1000])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]


def post(http: httpx.Client, path: str, body: Any) -> int:
    response = http.post(
        path, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert_answered(response, path, body)
    return response.status_code


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETION),
        ("/generate", GENERATE),
        ("/batch_generate", BATCH),
        ("/v1/responses", RESPONSES),
    ],
)
def test_fuzzed_bodies_never_get_a_5xx(http, path, fields):
    statuses: set[int] = set()

    @FUZZ
    @given(body=body_of(path, fields))
    def run(body: Any) -> None:
        statuses.add(post(http, path, body))

    run()
    # The fuzz got past validation too: some bodies were generated for.
    assert 200 in statuses and 400 in statuses, statuses


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    path=st.one_of(
        st.sampled_from(
            ["/v1/models", "/health", "/health/ready", "/metrics", "/v1/chat/completions"]
        ),
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"),
            max_size=20,
        ).map(lambda name: "/v1/models/" + name),
        st.sampled_from(
            [
                "/v1/models/%00",
                "/v1/models/a%00b",
                "/v1/models/%ff",
                "/%00",
                "/v1/responses/resp_x",
                "/v1/responses/%00/input_items",
                "/v1/responses/resp_x/input_items?order=x&limit=-1",
            ]
        ),
    ),
)
def test_fuzzed_reads_never_get_a_5xx(http, method, path):
    response = http.request(method, path)
    # /health/ready may say 503 for the configured model whose Triton is down.
    if path != "/health/ready":
        assert_answered(response, path)
