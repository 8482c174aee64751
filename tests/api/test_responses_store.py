"""Stored responses: previous_response_id, retrieve, delete, input_items, key isolation,
the privacy setting, retention and prune, and one request-log row per request (issue 18)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import openai
import pytest
from django.core.management import call_command
from django.utils import timezone
from openai import OpenAI

from accounts.models import RequestLog
from llmgateway.models import StoredResponse
from tests.accounts.conftest import wait_for_logs
from tests.api.conftest import HERMES_MODEL
from tests.api.test_responses import WEATHER
from tests.conftest import CHAT_MODEL

pytestmark = pytest.mark.committed_db


@pytest.fixture(autouse=True)
def _db(django_db_blocker):
    """The committed rows the gateway wrote, read from here."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def other(storing_gateway, django_db_blocker):
    """A client with the key of another owner."""
    from accounts.services import key_create, owner_get_or_create

    with django_db_blocker.unblock():
        _, secret = key_create(owner=owner_get_or_create(username="someone-else"), name="other")
    with OpenAI(base_url=storing_gateway.url + "/v1", api_key=secret, max_retries=0) as client:
        yield client


def test_two_turns(oai):
    first = oai.responses.create(
        model=CHAT_MODEL, instructions="Not inherited.", input="[[say:My name is Ada.]]"
    )
    second = oai.responses.create(
        model=CHAT_MODEL, previous_response_id=first.id, input="[[say:Noted.]]"
    )
    assert second.previous_response_id == first.id and second.output_text == "Noted."
    # The stateless replay of the same conversation: the same prompt, token for token.
    replay = oai.responses.create(
        model=CHAT_MODEL,
        store=False,
        input=[
            {"role": "user", "content": "[[say:My name is Ada.]]"},
            {"role": "assistant", "content": "My name is Ada."},
            {"role": "user", "content": "[[say:Noted.]]"},
        ],
    )
    assert second.usage.input_tokens == replay.usage.input_tokens
    assert second.usage.input_tokens > first.usage.input_tokens
    assert replay.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(replay.id)


def test_function_call_output_continues_a_stored_call(oai):
    first = oai.responses.create(
        model=HERMES_MODEL, input='[[tool:get_weather:{"city": "Lima"}]]', tools=[WEATHER]
    )
    (call,) = [i for i in first.output if i.type == "function_call"]
    second = oai.responses.create(
        model=HERMES_MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert second.status == "completed" and "sunny" in second.output_text


def test_retrieve_and_delete(oai):
    created = oai.responses.create(model=CHAT_MODEL, input="[[say:keep me]]")
    fetched = oai.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    assert oai.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError) as caught:
        oai.responses.retrieve(created.id)
    assert caught.value.body["param"] == "response_id"
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(created.id)
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=CHAT_MODEL, previous_response_id=created.id, input="x")
    assert refused.value.code == "previous_response_not_found"


def test_input_items_pages(oai, raw):
    texts = [f"m{i}" for i in range(5)]
    created = oai.responses.create(
        model=CHAT_MODEL, input=[{"role": "user", "content": t} for t in texts]
    )
    everything = list(oai.responses.input_items.list(created.id, limit=2))
    assert [i.content[0].text for i in everything] == texts[::-1]  # newest first
    assert all(i.id.startswith("msg_") and i.type == "message" for i in everything)
    page = raw.get(f"/v1/responses/{created.id}/input_items", params={"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert page["first_id"] == everything[0].id and page["last_id"] == everything[1].id
    after = raw.get(
        f"/v1/responses/{created.id}/input_items",
        params={"limit": 10, "order": "asc", "after": everything[-1].id},
    ).json()
    assert [i["content"][0]["text"] for i in after["data"]] == texts[1:]
    assert after["has_more"] is False
    # A continued response lists the whole conversation: earlier input and output, then its own.
    second = oai.responses.create(model=CHAT_MODEL, previous_response_id=created.id, input="m5")
    chained = list(oai.responses.input_items.list(second.id, order="asc"))
    assert [i.type for i in chained] == ["message"] * 7
    assert chained[5].role == "assistant" and chained[6].content[0].text == "m5"


def test_other_owner_sees_nothing(oai, other, raw):
    created = oai.responses.create(model=CHAT_MODEL, input="[[say:mine]]")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        list(other.responses.input_items.list(created.id))
    with pytest.raises(openai.BadRequestError) as caught:
        other.responses.create(model=CHAT_MODEL, previous_response_id=created.id, input="x")
    assert caught.value.code == "previous_response_not_found"
    assert oai.responses.retrieve(created.id).id == created.id  # still the owner's


def test_nothing_is_stored_without_content_logging(live_gateway):
    # The session's gateway runs with REQUEST_LOG_CONTENT off (the default).
    with OpenAI(
        base_url=live_gateway.url + "/v1", api_key=live_gateway.api_key, max_retries=0
    ) as client:
        created = client.responses.create(model=CHAT_MODEL, input="[[say:private]]")
        assert created.store is False and created.output_text == "private"
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(created.id)
    assert not StoredResponse.objects.filter(id=created.id).exists()


def test_retention_and_prune(oai, settings):
    old = oai.responses.create(model=CHAT_MODEL, input="[[say:old]]")
    new = oai.responses.create(model=CHAT_MODEL, input="[[say:new]]")
    StoredResponse.objects.filter(id=old.id).update(
        created_at=timezone.now() - timedelta(days=settings.RESPONSES_RETENTION_DAYS + 1)
    )
    with pytest.raises(openai.NotFoundError):  # past retention: gone even before the prune
        oai.responses.retrieve(old.id)
    call_command("pruneresponses")
    assert not StoredResponse.objects.filter(id=old.id).exists()
    assert StoredResponse.objects.filter(id=new.id).exists()


def _rows(request_id: str) -> list[RequestLog]:
    wait_for_logs(lambda: RequestLog.objects.filter(request_id=request_id).count(), 1)
    return list(RequestLog.objects.filter(request_id=request_id))


@pytest.mark.parametrize("stream", [False, True])
def test_one_log_row(oai, stream):
    request_id = f"resp-log-{stream}-{uuid.uuid4().hex[:6]}"
    headers = {"x-request-id": request_id}
    if stream:
        with oai.responses.stream(
            model=CHAT_MODEL, input="[[say:logged]]", extra_headers=headers
        ) as events:
            final = events.get_final_response()
    else:
        final = oai.responses.create(
            model=CHAT_MODEL, input="[[say:logged]]", extra_headers=headers
        )
    (row,) = _rows(request_id)
    assert (row.endpoint, row.status, row.streamed) == ("/v1/responses", 200, stream)
    assert row.prompt_tokens == final.usage.input_tokens
    assert row.completion_tokens == final.usage.output_tokens


def test_disconnect_is_one_row_and_not_stored(raw, devtriton):
    request_id = f"resp-cut-{uuid.uuid4().hex[:6]}"
    body = {"model": CHAT_MODEL, "input": "[[delay:30]][[long:400]]", "stream": True}
    received, response_id = 0, None
    with raw.stream(
        "POST", "/v1/responses", json=body, headers={"x-request-id": request_id}
    ) as response:
        for line in response.iter_lines():
            if response_id is None and line.startswith("data: "):
                response_id = json.loads(line[6:])["response"]["id"]
            if line.startswith("event: response.output_text.delta"):
                received += 1
                if received == 5:
                    break
    devtriton.wait_for_event("cancelled", request_id, timeout=10)
    (row,) = _rows(request_id)
    assert row.cancelled and row.status == 499 and row.streamed
    assert received <= row.completion_tokens < 400
    assert response_id.startswith("resp_")
    assert not StoredResponse.objects.filter(id=response_id).exists()


def test_an_exhausted_key_is_refused(storing_gateway, django_db_blocker):
    from accounts.services import key_create, owner_get_or_create

    _, secret = key_create(
        owner=owner_get_or_create(username="tight"), name="tight", budget_tokens=5
    )
    with (
        OpenAI(base_url=storing_gateway.url + "/v1", api_key=secret, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.responses.create(model=CHAT_MODEL, input="[[say:too much]]")
    assert caught.value.status_code == 429


def test_streamed_answers_are_stored_and_referenced(oai):
    # PostgreSQL's jsonb takes no NUL: a request holding one is refused whole (issue 19).
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=CHAT_MODEL, input="[[say:streamed]]\x00")
    assert refused.value.body["param"] == "input"
    with oai.responses.stream(model=CHAT_MODEL, input="[[say:streamed]]") as events:
        final = events.get_final_response()
    assert oai.responses.retrieve(final.id).output_text == "streamed"
    (item,) = list(oai.responses.input_items.list(final.id))
    assert item.content[0].text == "[[say:streamed]]"
    # An earlier item referenced by id, in a continued conversation.
    again = oai.responses.create(
        model=CHAT_MODEL,
        previous_response_id=final.id,
        input=[{"type": "item_reference", "id": item.id}],
    )
    assert again.output_text == "streamed"
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=CHAT_MODEL, input=[{"type": "item_reference", "id": "msg_x"}])


def test_without_the_platform_responses_are_stored_for_everyone(extra_models, tmp_path):
    from tests.conftest import gateway_running

    env = {"GATEWAY_PLATFORM": "false", "REQUEST_LOG_CONTENT": "true"}
    with (
        gateway_running(tmp_path, env) as gateway,
        OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0) as client,
    ):
        first = client.responses.create(model=CHAT_MODEL, input="[[say:open]]")
        assert client.responses.retrieve(first.id).output_text == "open"
        second = client.responses.create(
            model=CHAT_MODEL, previous_response_id=first.id, input="[[say:again]]"
        )
        assert second.usage.input_tokens > first.usage.input_tokens
    assert StoredResponse.objects.get(id=first.id).owner_id is None
