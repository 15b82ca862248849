"""The official anthropic SDK works against the server unchanged."""

from __future__ import annotations

import anthropic
import pytest

from tests.conftest import SMOLLM2, DaphneServer

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# The SDK no longer has a temperature argument; older clients send it in the body, as this does.
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture
def sdk(daphne_server: DaphneServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=daphne_server.url, api_key="not-needed", max_retries=0)


def test_messages_create(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(
        model=SMOLLM2, max_tokens=16, system="You are terse.", messages=[{"role": "user", "content": "What is 2+2?"}]
    )
    assert message.id.startswith("msg_") and message.model == SMOLLM2 and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert (
        0 < message.usage.output_tokens <= 16
        and message.usage.input_tokens + message.usage.cache_read_input_tokens > 10
    )


def test_messages_stream(sdk: anthropic.Anthropic) -> None:
    request = {
        "model": SMOLLM2,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Name three colours."}],
        **GREEDY,
    }
    with sdk.messages.stream(**request) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")
    assert sdk.messages.create(**request).content[0].text == text


def test_messages_count_tokens(sdk: anthropic.Anthropic) -> None:
    request = {
        "model": SMOLLM2,
        "system": "Count me.",
        "messages": [{"role": "user", "content": "A question nobody asked before?"}],
    }
    counted = sdk.messages.count_tokens(**request, tools=[WEATHER])
    usage = sdk.messages.create(**request, tools=[WEATHER], max_tokens=1).usage
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens
    assert sdk.messages.count_tokens(**request).input_tokens < counted.input_tokens  # the tools are counted


def test_a_tool_use_round_trip(sdk: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}
    with sdk.messages.stream(model=SMOLLM2, max_tokens=60, messages=messages, **forced, **GREEDY) as stream:
        first = stream.get_final_message()
    [call] = first.content
    assert first.stop_reason == "tool_use" and call.type == "tool_use" and call.name == "get_weather"
    assert isinstance(call.input["city"], str)
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 C, sunny"}]},
    ]
    second = sdk.messages.create(
        model=SMOLLM2, max_tokens=30, messages=messages, tools=[WEATHER], tool_choice={"type": "none"}, **GREEDY
    )
    assert second.content[0].type == "text" and second.content[0].text


def test_errors_arrive_as_sdk_exceptions(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(model=SMOLLM2, max_tokens=5, messages=[{"role": "user", "content": [image]}])
    assert bad.value.body["error"]["type"] == "invalid_request_error" and "The image is corrupt" in bad.value.message
