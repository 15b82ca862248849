"""The OpenAI Responses API (/v1/responses) on the real model: the response object, its typed
stream, tools, text formats, stored responses and continuing them, records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.test import AsyncClient
from rest_framework.exceptions import ValidationError

from inference.models import RequestRecord, StoredResponse
from inference.protocol.responses import ResponseRequestSerializer
from inference.services import responses as stored_responses
from inference.services.keys import api_key_create

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def post(**body: Any) -> Any:
    return await AsyncClient().post("/v1/responses", body, content_type="application/json")


async def created(**body: Any) -> dict[str, Any]:
    response = await post(**{"input": "Say hello.", "max_output_tokens": 8, "temperature": 0, **body})
    assert response.status_code == 200, response.content
    return response.json()


async def events(**body: Any) -> list[dict[str, Any]]:
    response = await post(**{"input": "Say hello.", "max_output_tokens": 8, "temperature": 0, **body, "stream": True})
    assert response.status_code == 200, response.content
    raw = b"".join([part async for part in response.streaming_content]).decode()
    frames = [frame for frame in raw.split("\n\n") if frame]
    parsed = []
    for frame in frames:
        kind, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        parsed.append(event)
    assert [event["sequence_number"] for event in parsed] == list(range(len(parsed)))
    return parsed


def output_text(body: dict[str, Any]) -> str:
    return "".join(part["text"] for item in body["output"] if item["type"] == "message" for part in item["content"])


async def test_a_response_object_with_usage(use_config) -> None:
    body = await created(instructions="Answer briefly.", metadata={"ticket": "7"})
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert body["status"] in ("completed", "incomplete")
    assert body["output"][0]["type"] == "message" and body["output"][0]["role"] == "assistant"
    assert output_text(body)
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert body["instructions"] == "Answer briefly." and body["metadata"] == {"ticket": "7"}
    assert body["store"] is True and body["previous_response_id"] is None


async def test_cut_by_max_output_tokens_is_incomplete(use_config) -> None:
    body = await created(input="Count from one to one hundred in words.", max_output_tokens=3)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 3


async def test_the_stream_is_the_typed_events_in_order(use_config) -> None:
    stream = await events()
    kinds = [event["type"] for event in stream]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        kinds[-1],
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = [event["delta"] for event in stream if event["type"] == "response.output_text.delta"]
    final = stream[-1]["response"]
    assert deltas and "".join(deltas) == output_text(final) == stream[-4]["text"]
    assert stream[0]["response"]["status"] == "in_progress" and stream[0]["response"]["id"] == final["id"]
    assert final["usage"]["output_tokens"] > 0


@pytest.mark.slow
async def test_a_forced_function_call(use_config) -> None:
    body = await created(input="Weather in Paris?", tools=[WEATHER], tool_choice="required", max_output_tokens=40)
    call = body["output"][-1]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["call_id"].startswith("call_")
    assert isinstance(json.loads(call["arguments"])["city"], str)
    stream = await events(
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
    )
    kinds = [event["type"] for event in stream]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    done = next(event for event in stream if event["type"] == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == json.loads(stream[-1]["response"]["output"][-1]["arguments"])


@pytest.mark.slow
async def test_a_call_to_a_namespaced_function_names_its_namespace(use_config) -> None:
    namespace = {"type": "namespace", "name": "weather_tools", "description": "Weather", "tools": [WEATHER]}
    body = await created(input="Weather in Paris?", tools=[namespace], tool_choice="required", max_output_tokens=40)
    call = body["output"][-1]
    assert (call["type"], call["name"], call["namespace"]) == ("function_call", "get_weather", "weather_tools")


@pytest.mark.slow
async def test_function_call_output_round_trip(use_config) -> None:
    body = await created(
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
        ],
        tools=[WEATHER],
    )
    assert body["status"] in ("completed", "incomplete") and body["usage"]["input_tokens"] > 20


@pytest.mark.slow
async def test_json_schema_text_format(use_config) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    body = await created(
        input="What is 2+2? Answer in JSON.",
        max_output_tokens=20,
        text={"format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}},
    )
    assert isinstance(json.loads(output_text(body))["answer"], int)


@pytest.mark.slow
async def test_hosted_tools_and_agent_fields_are_accepted(use_config) -> None:
    body = await created(
        tools=[
            {"type": "web_search", "external_web_access": False},
            {"type": "namespace", "name": "files", "description": "Files", "tools": [WEATHER]},
        ],
        reasoning={"effort": "high", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        prompt_cache_key="abc",
        client_metadata={"x": "y"},
        parallel_tool_calls=True,
        store=False,
        safety_identifier="user-9",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
            {"type": "reasoning", "summary": [], "encrypted_content": "opaque"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        ],
    )
    assert all(item["type"] != "reasoning" for item in body["output"])
    record = await RequestRecord.objects.aget(completion_id=body["id"])
    assert record.end_user == "user-9" and record.endpoint == "/v1/responses"


@pytest.mark.slow
async def test_stored_responses_are_retrieved_listed_deleted_and_continued(use_config) -> None:
    client = AsyncClient()
    first = await created(input="My name is Ada. Say hi.")
    assert (await client.get(f"/v1/responses/{first['id']}")).json() == first
    items = (await client.get(f"/v1/responses/{first['id']}/input_items")).json()
    assert items["object"] == "list" and items["data"][0]["content"][0]["text"] == "My name is Ada. Say hi."
    assert items["has_more"] is False and items["first_id"] == items["data"][0]["id"]

    second = await created(input="What is my name?", previous_response_id=first["id"])
    assert second["previous_response_id"] == first["id"]
    # The first turn's prompt was processed once: the continuation finds it in the slot's cache.
    assert second["usage"]["input_tokens_details"]["cached_tokens"] >= first["usage"]["input_tokens"] - 1
    stored = await StoredResponse.objects.aget(response_id=second["id"])
    assert [item["type"] for item in stored.history] == ["message", "message"]  # the first input and output

    deleted = await client.delete(f"/v1/responses/{first['id']}")
    assert deleted.json() == {"id": first["id"], "object": "response", "deleted": True}
    assert (await client.get(f"/v1/responses/{first['id']}")).status_code == 404
    gone = await post(input="Hi", previous_response_id=first["id"])
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "previous_response_id"


@pytest.mark.slow
async def test_store_false_keeps_nothing(use_config) -> None:
    body = await created(store=False)
    assert body["store"] is False
    assert (await AsyncClient().get(f"/v1/responses/{body['id']}")).status_code == 404


@pytest.mark.slow
async def test_a_response_is_invisible_to_another_key(use_config) -> None:
    alice, alice_secret = await _key("alice")
    _, bob_secret = await _key("bob")
    body = (
        await AsyncClient().post(
            "/v1/responses",
            {"input": "Hi", "max_output_tokens": 2},
            content_type="application/json",
            headers={"Authorization": f"Bearer {alice_secret}"},
        )
    ).json()
    assert (await StoredResponse.objects.aget(response_id=body["id"])).api_key == alice.prefix
    as_bob = {"Authorization": f"Bearer {bob_secret}"}
    assert (await AsyncClient().get(f"/v1/responses/{body['id']}", headers=as_bob)).status_code == 404
    assert (await AsyncClient().get(f"/v1/responses/{body['id']}")).status_code == 404  # no key at all
    assert (
        await AsyncClient().get(f"/v1/responses/{body['id']}", headers={"Authorization": f"Bearer {alice_secret}"})
    ).status_code == 200


async def _key(name: str) -> Any:
    return await sync_to_async(api_key_create)(name=name)


@pytest.mark.slow
async def test_input_items_pages(use_config) -> None:
    texts = [f"line {n}" for n in range(5)]
    body = await created(input=[{"role": "user", "content": text} for text in texts], max_output_tokens=1)
    client = AsyncClient()
    url = f"/v1/responses/{body['id']}/input_items"
    newest = (await client.get(url, {"limit": 2})).json()
    assert newest["has_more"] is True
    oldest = (await client.get(url, {"order": "asc", "limit": 2})).json()
    rest = (await client.get(url, {"order": "asc", "after": oldest["last_id"], "limit": 10})).json()
    listed = [item["content"][0]["text"] for item in oldest["data"] + rest["data"]]
    assert listed == texts and rest["has_more"] is False
    assert [item["id"] for item in newest["data"]] == [item["id"] for item in rest["data"][::-1][:2]]
    assert (await client.get(url, {"limit": 0})).status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input"),
        ({"input": "Hi", "background": True}, "background"),
        ({"input": "Hi", "tool_choice": "required"}, "tool_choice"),
        ({"input": "Hi", "text": {"format": {"type": "xml"}}}, "text"),
        ({"input": []}, "input"),
        ({"input": "Hi", "tools": [{"type": "function"}]}, "tools"),
    ],
)
def test_what_is_refused_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ResponseRequestSerializer.parse(body)
    assert param in refused.value.detail


def test_what_codex_sends_is_understood() -> None:
    """What `codex exec` 0.169.0 sends (captured): developer messages, functions and a namespace
    of them offered by name, web_search (which this server cannot run) not offered."""
    body = json.loads((Path(__file__).parent / "data" / "agents" / "codex_request.json").read_text())
    request = ResponseRequestSerializer.parse(body)
    names = [tool.name for tool in request.chat.tools]
    assert "exec_command" in names and "spawn_agent" in names and len(names) == 12
    assert [turn.role for turn in request.chat.conversation] == ["system", "user"]
    assert request.stream and not request.store and request.echo["prompt_cache_key"] == body["prompt_cache_key"]


@pytest.mark.slow
async def test_tools_that_do_not_fit_the_context_are_offered_in_short(
    use_config, caplog: pytest.LogCaptureFixture
) -> None:
    use_config(n_ctx=512)
    long_tools = [
        {**WEATHER, "name": f"tool_{n}", "description": f"Tool number {n}. " + "It does many useful things. " * 12}
        for n in range(6)
    ]
    body = await created(input="Hi", tools=long_tools, max_output_tokens=4)
    assert body["usage"]["input_tokens"] < 512
    assert "offering them in short" in caplog.text


@pytest.mark.slow
async def test_one_record_per_request_with_the_usage_and_the_route_in_metrics(use_config, admin_client) -> None:
    streamed = (await events())[-1]["response"]
    plain = await created()
    for body in (streamed, plain):
        record = await RequestRecord.objects.aget(completion_id=body["id"])
        assert (record.endpoint, record.status, record.http_status) == ("/v1/responses", "ok", 200)
        assert (record.prompt_tokens, record.completion_tokens) == (
            body["usage"]["input_tokens"],
            body["usage"]["output_tokens"],
        )
    assert (await post(input="Hi", model="no-such-model")).status_code == 404
    assert await RequestRecord.objects.filter(endpoint="/v1/responses").acount() == 3
    exposition = (await AsyncClient().get("/metrics")).content.decode()
    assert 'endpoint="/v1/responses"' in exposition
    csv = await sync_to_async(lambda: b"".join(admin_client.get("/dashboard/export.csv").streaming_content))()
    assert csv.count(b"/v1/responses") == 3


@pytest.mark.slow
async def test_stored_responses_need_the_database(use_config, monkeypatch: pytest.MonkeyPatch) -> None:
    body = await created()

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(stored_responses, "stored_response_get", unreachable)
    answer = await AsyncClient().get(f"/v1/responses/{body['id']}")
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "database_unavailable"
    assert answer.headers["Retry-After"] == "1"
