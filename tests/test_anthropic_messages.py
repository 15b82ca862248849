"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API) with the real
SmolLM2: shapes, events, stops, tools, errors, keys, quotas and records."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic.types
import httpx
import pydantic
import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.test import AsyncClient
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.exceptions import ValidationError

from inference import errors
from inference.access.quotas import QuotaExceeded
from inference.models import RequestRecord
from inference.protocol import MessagesRequestSerializer, anthropic_output
from inference.protocol import tool_calls as tools
from inference.runtime.errors import WorkerFailed
from inference.runtime.jobs import Finished, Generation, JobEvent, Sampling, TextDelta
from inference.services import keys as key_services
from inference.serving import messages
from inference.serving.answers import with_heartbeat
from inference.serving.messages import message_body, message_events
from tests.conftest import SMOLLM2, DaphneServer, plain_answer, validate_anthropic_error
from tests.test_concurrency import wait_until_idle

HELLO = [{"role": "user", "content": "Say hello."}]
COUNTING = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
FORCED = {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}
AGENTS = Path(__file__).parent / "data" / "agents"
STREAM_EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


async def post(path: str = "/v1/messages", headers: dict[str, str] | None = None, **body: Any) -> Any:
    return await AsyncClient().post(path, body, content_type="application/json", headers=headers or {})


def events_of(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE frame; each frame names its data's type."""
    events = []
    for frame in raw.decode().split("\n\n")[:-1]:
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), frame
        events.append((name[7:], json.loads(data[6:])))
        assert events[-1][1]["type"] == events[-1][0]
    assert raw.endswith(b"\n\n")
    return events


async def stream(
    path: str = "/v1/messages", headers: dict[str, str] | None = None, **body: Any
) -> list[tuple[str, dict]]:
    response = await post(path, headers, **{**body, "stream": True})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream"
    events = events_of(b"".join([part async for part in response.streaming_content]))
    for name, data in events:
        if name != "ping":
            STREAM_EVENT.validate_python(data)
    return events


def streamed_text(events: list[tuple[str, dict]]) -> str:
    return "".join(
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
    )


def text_of(message: dict) -> str:
    return "".join(block["text"] for block in message["content"] if block["type"] == "text")


def error_of(response: Any, status: int, error_type: str) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    validate_anthropic_error(body)
    assert body["error"]["type"] == error_type, body
    return body["error"]["message"]


@pytest.mark.slow
async def test_a_message_in_anthropic_shape(use_config) -> None:
    response = await post(model=SMOLLM2, messages=HELLO, max_tokens=8)
    body = response.json()
    assert response.status_code == 200, body
    anthropic.types.Message.model_validate(body)
    assert body["id"].startswith("msg_") and (body["type"], body["role"], body["model"]) == (
        "message",
        "assistant",
        SMOLLM2,
    )
    assert [block["type"] for block in body["content"]] == ["text"] and body["content"][0]["text"]
    assert body["stop_reason"] in ("end_turn", "max_tokens") and body["stop_sequence"] is None
    usage = body["usage"]
    assert usage["input_tokens"] > 5 and 0 < usage["output_tokens"] <= 8
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (0, 0)  # a cold model
    assert (usage["output_tokens"] == 8) == (body["stop_reason"] == "max_tokens")


@pytest.mark.slow
async def test_the_stream_sends_anthropic_events_in_order(use_config) -> None:
    request = {"messages": COUNTING, "max_tokens": 12, "temperature": 0}
    plain = (await post(**request)).json()
    events = await stream(**request)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    content = [name for name in names[2:] if name != "ping"]  # a ping may fall in any silence
    deltas = len(content) - 4
    assert content == [
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 0
    assert start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"] == (
        plain["usage"]["input_tokens"] + plain["usage"]["cache_read_input_tokens"]
    )
    assert streamed_text(events) == text_of(plain)
    delta = dict(events)["message_delta"]
    assert delta["delta"] == {"stop_reason": plain["stop_reason"], "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": plain["usage"]["output_tokens"]}


@pytest.mark.slow
async def test_a_stop_sequence_of_the_request_is_reported(use_config) -> None:
    free = text_of((await post(messages=COUNTING, max_tokens=40, temperature=0)).json())
    assert "5" in free
    stopped = (await post(messages=COUNTING, max_tokens=40, temperature=0, stop_sequences=["5", "never"])).json()
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "5")
    assert "5" not in text_of(stopped) and free.startswith(text_of(stopped))
    events = await stream(messages=COUNTING, max_tokens=40, temperature=0, stop_sequences=["5"])
    assert dict(events)["message_delta"]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "5"}
    assert streamed_text(events) == text_of(stopped)


async def test_the_templates_own_end_is_the_end_of_a_turn() -> None:
    """A stop string the request did not ask for (the chat template's end marker) is no
    stop_sequence."""

    async def events() -> AsyncIterator[JobEvent]:
        yield TextDelta("Hi.", 1)
        yield Finished("stop", 3, 2, stop_sequence="<|im_end|>")

    request = MessagesRequestSerializer.parse({"max_tokens": 5, "messages": HELLO, "stop_sequences": ["x"]})
    body = await message_body(plain_answer(Generation(model="m", prompt_tokens=3, events=events())), request)
    assert (body["stop_reason"], body["stop_sequence"], body["content"]) == (
        "end_turn",
        None,
        [{"type": "text", "text": "Hi."}],
    )


@pytest.mark.slow
async def test_max_tokens_beyond_the_context_generates_until_the_context_ends(use_config) -> None:
    use_config(n_ctx=256)
    response = await post(messages=COUNTING, max_tokens=32000)  # what Claude Code always asks for
    body = response.json()
    assert response.status_code == 200, body
    assert body["stop_reason"] in ("max_tokens", "end_turn")
    usage = body["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["output_tokens"] <= 256


@pytest.mark.slow
async def test_a_forced_tool_is_a_tool_use_block(use_config) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = (await post(messages=question, max_tokens=60, temperature=0, **FORCED)).json()
    assert body["stop_reason"] == "tool_use", body
    [call] = body["content"]
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_") and call["name"] == "get_weather"
    assert isinstance(call["input"], dict) and isinstance(call["input"]["city"], str)

    events = await stream(messages=question, max_tokens=60, temperature=0, **FORCED)
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert starts == [{"type": "tool_use", "id": starts[0]["id"], "name": "get_weather", "input": {}}]
    partial = "".join(data["delta"]["partial_json"] for name, data in events if name == "content_block_delta")
    assert json.loads(partial) == call["input"]
    assert dict(events)["message_delta"]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.slow
async def test_an_output_format_is_followed(use_config) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    question = [{"role": "user", "content": "What is 2+2? Answer in JSON."}]
    body = (
        await post(
            messages=question,
            max_tokens=60,
            temperature=0,
            output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}},
        )
    ).json()
    assert isinstance(json.loads(text_of(body))["answer"], int), body


@pytest.mark.slow
async def test_a_tool_result_round_trip_is_answered(use_config) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 C, sunny"}]},
    ]
    response = await post(messages=messages, tools=[WEATHER], max_tokens=8)
    assert response.status_code == 200, response.content
    assert response.json()["stop_reason"] in ("end_turn", "max_tokens", "tool_use")


def test_blocks_become_the_chat_the_template_renders() -> None:
    request = MessagesRequestSerializer.parse(
        {
            "model": SMOLLM2,
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Quickly.", "cache_control": {"type": "ephemeral"}}],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "They want weather.", "signature": "c2ln"},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "21 C"}],
                        },
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no such call", "is_error": True},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
                {"role": "system", "content": "Answer in French."},
            ],
            "tools": [
                {**WEATHER, "defer_loading": False, "cache_control": {"type": "ephemeral"}},
                {**WEATHER, "name": "get_time", "defer_loading": True},
                {"type": "web_search_20250305", "name": "web_search"},
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_k": 7,
            "metadata": {"user_id": "user-1"},
            "thinking": {"type": "adaptive"},
            "output_config": {"effort": "high"},
            "service_tier": "auto",
            "context_management": {"edits": []},
        }
    )
    chat = request.chat
    assert chat.conversation == (
        tools.Turn("system", "Be brief.\nAnswer in French."),
        tools.Turn("user", "Weather in Paris?\n\nQuickly."),
        tools.Turn(
            "assistant",
            calls=(tools.ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),),
            reasoning="They want weather.",
        ),
        tools.Turn("tool", "21 C", call_id="toolu_1", name="get_weather"),
        tools.Turn("tool", "Error: no such call", call_id="toolu_2", name="toolu_2"),
        tools.Turn("user", "And tomorrow?"),
    )
    assert not chat.parallel_tool_calls  # disable_parallel_tool_use
    # Neither the deferred tool nor the server tool is offered.
    assert chat.tools == (tools.Tool("get_weather", "The weather in a city", WEATHER["input_schema"]),)
    assert (chat.model, chat.tool_choice, chat.user, chat.stream, chat.response_format) == (
        SMOLLM2,
        "required",
        "user-1",
        False,
        None,
    )
    assert (chat.job.max_tokens, chat.job.stop, request.stop_sequences) == (5, ("END",), ("END",))
    assert chat.job.sampling == Sampling(temperature=0.5, top_k=7)


@pytest.mark.parametrize(
    ("change", "param", "fragment"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image", "source": {}}]}
                ]
            },
            "messages[0].content[1]",
            "An image source's 'type' must be 'base64' or 'url'",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}],
                    }
                ]
            },
            "messages[0].content[0].content[0]",
            "A 'image' block is not supported here",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
            "Documents are not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "server_tool_use"}]}]},
            "messages[0].content[0]",
            "'server_tool_use' block is not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
            "messages[0].content[0]",
            "cannot be in a user message",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}
                ]
            },
            "messages[0].content[0].input",
            "Expected an object",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "thinking"}]}]},
            "messages[0].content[0]",
            "cannot be in a system message",
        ),
        ({"tools": [{"name": "has space", "input_schema": {}}]}, "tools[0].name", "Use 1 to 128"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema", "JSON schema"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice", "names no tool"),
        (
            {"tools": [{**WEATHER, "defer_loading": True}], "tool_choice": {"type": "tool", "name": "get_weather"}},
            "tool_choice",
            "names no tool",
        ),
        ({"tools": [{**WEATHER, "defer_loading": "yes"}]}, "tools[0].defer_loading", "Expected a boolean"),
        (
            {"tools": [{"type": "bash_20250124", "name": "bash"}], "tool_choice": {"type": "any"}},
            "tool_choice",
            "needs custom tools",
        ),
        ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format", "json_schema"),
        ({"max_tokens": None}, "max_tokens", "may not be null"),
        ({"temperature": 1.5}, "temperature", "less than or equal to 1"),
    ],
)
def test_what_cannot_be_served_is_refused_naming_the_parameter(change: dict, param: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as refused:
        MessagesRequestSerializer.parse({"max_tokens": 5, "messages": HELLO, **change})
    response = anthropic_output.anthropic_exception_handler(refused.value, {})
    assert response.status_code == 400 and response.data["error"]["type"] == "invalid_request_error"
    assert f"Invalid '{param}': " in response.data["error"]["message"] and fragment in response.data["error"]["message"]


def claude_code_request() -> tuple[str, dict[str, str], dict[str, Any]]:
    """What `claude -p` sent (tests/data/agents): its path, its Anthropic headers, its body."""
    captured = json.loads((AGENTS / "claude_code_request_headers.json").read_text())
    headers = {
        name: value
        for name, value in captured["headers"].items()
        if name.lower().startswith(("anthropic-", "x-api-key"))
    }
    return captured["path"], headers, json.loads((AGENTS / "claude_code_request.json").read_text())


def test_claude_codes_own_request_is_understood() -> None:
    _, _, body = claude_code_request()
    chat = MessagesRequestSerializer.parse(body).chat
    assert [turn.role for turn in chat.conversation] == ["system", "user"]
    assert chat.conversation[0].content.startswith("x-anthropic-billing-header")
    assert "# Environment" in chat.conversation[0].content  # its mid-conversation system message
    assert chat.conversation[1].content.endswith("say hi")
    assert [tool.name for tool in chat.tools] == [
        tool["name"] for tool in body["tools"] if not tool.get("defer_loading")
    ]
    assert "DeferredToolPlaceholder" not in [tool.name for tool in chat.tools]
    assert (chat.stream, chat.job.max_tokens, chat.tool_choice) == (True, body["max_tokens"], "auto")
    assert chat.user == body["metadata"]["user_id"]


@pytest.mark.parametrize(
    ("exc", "status", "error_type", "headers"),
    [
        (
            errors.QueueFull("busy", retry_after=3),
            503,
            "overloaded_error",
            {"Retry-After": "3", "X-Llamasite-Error-Code": "queue_full"},
        ),
        (
            QuotaExceeded("over", retry_after=9),
            429,
            "rate_limit_error",
            {"Retry-After": "9", "X-Llamasite-Error-Code": "quota_exceeded"},
        ),
        (errors.InvalidApiKey("who?"), 401, "authentication_error", {"X-Llamasite-Error-Code": "invalid_api_key"}),
        (errors.GenerationFailed("broken"), 500, "api_error", {}),
        (RequestDataTooBig("big"), 413, "request_too_large", {"X-Llamasite-Error-Code": "request_too_large"}),
    ],
)
def test_errors_keep_our_statuses_in_anthropics_words(
    exc: Exception, status: int, error_type: str, headers: dict
) -> None:
    response = anthropic_output.anthropic_exception_handler(exc, {})
    assert (response.status_code, response.data["error"]["type"]) == (status, error_type)
    assert {name: value for name, value in response.items() if name.startswith(("Retry", "X-"))} == headers


@pytest.mark.slow
async def test_claude_codes_own_request_is_streamed(use_config) -> None:
    path, headers, body = claude_code_request()
    assert path == "/v1/messages?beta=true" and {"anthropic-version", "anthropic-beta", "x-api-key"} <= set(headers)
    # Every field as captured, but its 12k tokens of instructions and tools cut to a few hundred:
    # this machine reads a long prompt for minutes (the test above parses the whole body).
    for block in [*body["system"], *(block for message in body["messages"] for block in message["content"])]:
        block["text"] = block["text"][:300]
    body["tools"] = [tool for tool in body["tools"] if tool["name"] in ("Edit", "Write", "DeferredToolPlaceholder")]
    events = await stream(path, headers, **body)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert dict(events)["message_start"]["message"]["usage"]["input_tokens"] > 500


async def test_a_corrupt_image_is_a_400_in_anthropics_shape(use_config) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    response = await post(
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}], max_tokens=5
    )
    message = error_of(response, 400, "invalid_request_error")
    assert message.startswith("Invalid 'messages[0].content[0]': The image is corrupt")


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_an_unknown_model_is_a_404_not_found_error(use_config, path: str) -> None:
    response = await post(path, model="no-such-model", messages=HELLO, max_tokens=5)
    assert "no-such-model" in error_of(response, 404, "not_found_error")
    assert response["X-Llamasite-Error-Code"] == "model_not_found"  # how a peer tells it from other 404s


@pytest.mark.slow
async def test_the_key_may_come_as_x_api_key(use_config) -> None:
    use_config(server={"require_api_key": True})
    _, secret = await sync_to_async(key_services.api_key_create)(name="claude")
    assert (await post(headers={"x-api-key": secret}, messages=HELLO, max_tokens=1)).status_code == 200
    assert (await post(headers={"Authorization": f"Bearer {secret}"}, messages=HELLO, max_tokens=1)).status_code == 200
    assert "x-api-key" in error_of(await post(messages=HELLO, max_tokens=1), 401, "authentication_error")
    error_of(
        await post("/v1/messages/count_tokens", {"x-api-key": "sk-unknown"}, messages=HELLO),
        401,
        "authentication_error",
    )


@pytest.mark.slow
async def test_a_key_over_its_quota_gets_a_429_with_retry_after(use_config) -> None:
    _, secret = await sync_to_async(key_services.api_key_create)(name="slow", requests_per_minute=1)
    assert (await post(headers={"x-api-key": secret}, messages=HELLO, max_tokens=1)).status_code == 200
    refused = await post(headers={"x-api-key": secret}, messages=HELLO, max_tokens=1)
    error_of(refused, 429, "rate_limit_error")
    assert 0 < int(refused["Retry-After"]) <= 60


async def requests_counted(endpoint: str, status: str) -> float:
    """llamasite_requests_total of an endpoint and status, summed over models and HTTP statuses."""
    text = (await AsyncClient().get("/metrics")).content.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llamasite_requests_total"
        and (sample.labels["endpoint"], sample.labels["status"]) == (endpoint, status)
    )


@pytest.mark.slow
async def test_each_request_leaves_one_record_with_its_usage(use_config) -> None:
    counted_before = [
        await requests_counted(endpoint, "ok") for endpoint in ("/v1/messages", "/v1/messages/count_tokens")
    ]
    plain = (await post(messages=HELLO, max_tokens=4)).json()
    counted = (await post("/v1/messages/count_tokens", messages=HELLO)).json()
    events = await stream(messages=HELLO, max_tokens=3)
    await post(model="no-such-model", messages=HELLO, max_tokens=1)
    records = [record async for record in RequestRecord.objects.order_by("id")]
    assert [(record.endpoint, record.status, record.http_status) for record in records] == [
        ("/v1/messages", "ok", 200),
        ("/v1/messages/count_tokens", "ok", 200),
        ("/v1/messages", "ok", 200),
        ("/v1/messages", "error", 404),
    ]
    usage = plain["usage"]
    assert records[0].completion_id == plain["id"]
    assert (records[0].prompt_tokens, records[0].completion_tokens) == (
        usage["input_tokens"] + usage["cache_read_input_tokens"],
        usage["output_tokens"],
    )
    assert (records[1].prompt_tokens, records[1].completion_tokens) == (counted["input_tokens"], 0)
    started, delta = dict(events)["message_start"]["message"], dict(events)["message_delta"]
    assert records[2].stream and records[2].completion_id == started["id"]
    assert (records[2].prompt_tokens, records[2].completion_tokens) == (
        started["usage"]["input_tokens"] + started["usage"]["cache_read_input_tokens"],
        delta["usage"]["output_tokens"],
    )
    counted = [await requests_counted(endpoint, "ok") for endpoint in ("/v1/messages", "/v1/messages/count_tokens")]
    assert [after - before for before, after in zip(counted_before, counted)] == [2, 1]  # in /metrics too


@pytest.mark.slow
async def test_count_tokens_is_the_input_of_the_same_request(use_config) -> None:
    request = {
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
    }
    counted = (await post("/v1/messages/count_tokens", **request)).json()
    assert counted["input_tokens"] > 50  # the tools instruction is part of it
    cold = (await post(max_tokens=2, **request)).json()["usage"]
    assert (cold["input_tokens"], cold["cache_read_input_tokens"]) == (counted["input_tokens"], 0)
    warm = (await post(max_tokens=2, **request)).json()["usage"]
    assert (
        warm["cache_read_input_tokens"] > 0
        and warm["input_tokens"] + warm["cache_read_input_tokens"] == counted["input_tokens"]
    )
    forced = (await post("/v1/messages/count_tokens", **request, tool_choice={"type": "any"})).json()
    assert forced["input_tokens"] != counted["input_tokens"]  # the forced call's instruction differs


async def test_a_ping_fills_every_silence_and_a_failure_is_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "PING_SECONDS", 0.05)

    async def slow_then_failing() -> AsyncIterator[JobEvent]:
        await asyncio.sleep(0.3)
        yield TextDelta("Hi", 1)
        raise WorkerFailed(model="m", cause="llama_decode returned -3")

    request = MessagesRequestSerializer.parse({"max_tokens": 5, "messages": HELLO})
    generation = Generation(model="m", prompt_tokens=3, events=slow_then_failing())
    events = events_of(b"".join([part async for part in message_events(plain_answer(generation), request)]))
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[1:].count("ping") >= 3
    assert names[names.index("content_block_start") - 1] == "ping" and names[-2:] == ["content_block_delta", "error"]
    assert (
        events[-1][1]["error"]["type"] == "overloaded_error" and "model m failed" in events[-1][1]["error"]["message"]
    )


async def test_with_heartbeat_fills_silences_with_none_and_closes_its_source() -> None:
    closed = asyncio.Event()

    async def items() -> AsyncIterator[int]:
        try:
            await asyncio.sleep(0.25)
            yield 1
            yield 2
            await asyncio.sleep(60)
            yield 3
        finally:
            closed.set()

    beats = with_heartbeat(items(), 0.1)
    seen: list[int | None] = []
    while 2 not in seen:
        seen.append(await anext(beats))
    assert seen[-2:] == [1, 2] and seen[:-2] and set(seen[:-2]) == {None}  # the silence, then the items
    assert await anext(beats) is None and not closed.is_set()
    await beats.aclose()  # type: ignore[attr-defined]  # an async generator, typed AsyncIterator (no aclose)
    assert closed.is_set()  # the source, still awaited in a task, was cancelled and closed

    async def failing() -> AsyncIterator[int]:
        yield 1
        raise WorkerFailed(model="m", cause="boom")

    with pytest.raises(WorkerFailed):
        [item async for item in with_heartbeat(failing(), 0.1)]


async def test_closing_a_stream_between_pings_closes_the_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client gone after a ping: the events are still being awaited (in the heartbeat's task)
    and are closed all the same."""
    monkeypatch.setattr(messages, "PING_SECONDS", 0.05)
    closed = asyncio.Event()

    async def waiting() -> AsyncIterator[JobEvent]:
        try:
            await asyncio.sleep(60)
            yield TextDelta("never", 1)
        finally:
            closed.set()

    request = MessagesRequestSerializer.parse({"max_tokens": 5, "messages": HELLO, "stream": True})
    frames = message_events(plain_answer(Generation(model="m", prompt_tokens=3, events=waiting())), request)
    firsts = [(await anext(frames)).split(b"\n")[0] for _ in range(3)]
    assert firsts == [b"event: message_start", b"event: ping", b"event: ping"]
    await frames.aclose()  # type: ignore[attr-defined]  # an async generator, typed AsyncIterator (no aclose)
    assert closed.is_set()


async def test_a_client_that_hangs_up_stops_its_generation(daphne_server: DaphneServer) -> None:
    body = {
        "model": SMOLLM2,
        "max_tokens": 2000,
        "stream": True,
        "messages": [{"role": "user", "content": "Count from 1 to 1000."}],
    }
    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=60) as client:
        async with client.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            deltas = 0
            async for line in response.aiter_lines():
                deltas += line == "event: content_block_delta"
                if deltas == 3:
                    break
        await wait_until_idle(client, SMOLLM2)
    cancelled = re.findall(rf"chat on {re.escape(SMOLLM2)}: cancelled after (\d+) tokens", daphne_server.log())
    assert cancelled and int(cancelled[-1]) < 50
