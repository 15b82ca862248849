"""The official openai SDK works against the server unchanged."""

from __future__ import annotations

import json

import openai
import pydantic
import pytest

from tests.conftest import SMOLLM2, DaphneServer


@pytest.fixture
def sdk(daphne_server: DaphneServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daphne_server.url}/v1", api_key="not-needed", max_retries=0)


def test_models_list(sdk: openai.OpenAI) -> None:
    assert SMOLLM2 in [model.id for model in sdk.models.list()]
    assert sdk.models.retrieve(SMOLLM2).id == SMOLLM2


def test_chat_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        max_tokens=16,
        temperature=0,
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 16 and completion.usage.prompt_tokens > 0


def test_streaming_chat_completion(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_errors_arrive_as_sdk_exceptions(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=SMOLLM2, messages=[])
    assert bad.value.param == "messages"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tool_call_loop(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = sdk.chat.completions.create(
        model=SMOLLM2, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=40
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 C, sunny"},
    ]
    second = sdk.chat.completions.create(
        model=SMOLLM2, messages=messages, tools=[WEATHER], max_tokens=30, temperature=0
    )
    assert second.choices[0].message.content or second.choices[0].message.tool_calls


def test_structured_output_parse(sdk: openai.OpenAI) -> None:
    class Cat(pydantic.BaseModel):
        name: str
        age: int

    parsed = sdk.beta.chat.completions.parse(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "Describe a cat."}],
        response_format=Cat,
        max_tokens=200,
        temperature=0,  # sampled, a small model may ramble past any max_tokens inside a string
    )
    cat = parsed.choices[0].message.parsed
    assert isinstance(cat, Cat)


def test_completions_and_embeddings(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model=SMOLLM2, prompt="1, 2, 3,", max_tokens=5, temperature=0, n=2)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.choices[0].text == completion.choices[1].text  # greedy
    vectors = sdk.embeddings.create(model=SMOLLM2, input=["a cat", "a dog"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 576
    assert vectors.usage.prompt_tokens > 0


def test_logprobs_and_n(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, n=2, logprobs=True, top_logprobs=2
    )
    assert len(reply.choices) == 2
    assert all(len(choice.logprobs.content[0].top_logprobs) == 2 for choice in reply.choices)


# --- the Responses API ---------------------------------------------------------------------------

RESPONSES_WEATHER = {"type": "function", **WEATHER["function"]}


def test_responses_create_retrieve_and_continue(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(model=SMOLLM2, input="My name is Ada. Say hi.", max_output_tokens=8, temperature=0)
    assert first.output_text and first.status in ("completed", "incomplete")
    assert sdk.responses.retrieve(first.id).output_text == first.output_text
    items = sdk.responses.input_items.list(first.id)
    assert items.data[0].content[0].text == "My name is Ada. Say hi."
    second = sdk.responses.create(
        model=SMOLLM2, input="What is my name?", previous_response_id=first.id, max_output_tokens=8, temperature=0
    )
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens and second.usage.input_tokens_details.cached_tokens > 0
    sdk.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)


def test_responses_stream(sdk: openai.OpenAI) -> None:
    # The SDK's final response is the one a `response.completed` event carries: room to finish.
    with sdk.responses.stream(model=SMOLLM2, input="Say hello.", max_output_tokens=200, temperature=0) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas and "".join(deltas) == final.output_text
    raw = list(sdk.responses.create(model=SMOLLM2, input="Hi", max_output_tokens=4, stream=True))
    assert raw[0].type == "response.created" and raw[-1].type in ("response.completed", "response.incomplete")


def test_responses_function_call_round_trip(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(
        model=SMOLLM2,
        input="What is the weather in Paris?",
        tools=[RESPONSES_WEATHER],
        tool_choice="required",
        max_output_tokens=40,
    )
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    second = sdk.responses.create(
        model=SMOLLM2,
        previous_response_id=first.id,
        tools=[RESPONSES_WEATHER],
        max_output_tokens=20,
        temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21 C, sunny"}],
    )
    assert second.status in ("completed", "incomplete") and second.output


def test_responses_parse(sdk: openai.OpenAI) -> None:
    class Cat(pydantic.BaseModel):
        name: str
        age: int

    parsed = sdk.responses.parse(
        model=SMOLLM2, input="Describe a cat.", text_format=Cat, max_output_tokens=200, temperature=0
    )
    assert isinstance(parsed.output_parsed, Cat)
