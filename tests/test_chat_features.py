"""The rest of a chat request, against the real model: n, logprobs, JSON output, tools, logit
bias, seed, usage in streams (schema output: test_json_schema.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.test import AsyncClient

from inference.models import RequestRecord
from inference.runtime.engine import GenerationEngine
from inference.runtime.jobs import CompletionJob, Sampling
from inference.runtime.llama.sampling import greedy_alone
from inference.runtime.settings import LoadSettings
from tests.conftest import validate_openai

# Real-model generations (tools, n choices, JSON) of seconds each.
pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}


async def post_chat(**body: Any) -> Any:
    return await AsyncClient().post("/v1/chat/completions", body, content_type="application/json")


async def stream(**body: Any) -> list[dict]:
    response = await post_chat(stream=True, **body)
    assert response.status_code == 200, response.content
    raw = b"".join([part async for part in response.streaming_content]).decode()
    events = [event for event in raw.split("\n\n") if event]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    for chunk in chunks:
        validate_openai("CreateChatCompletionStreamResponse", chunk)
    return chunks


async def test_n_choices_each_with_its_index_and_usage_for_all(use_config) -> None:
    body = (await post_chat(messages=HELLO, n=3, max_tokens=6, ignore_eos=True, temperature=1.2, seed=5)).json()
    validate_openai("CreateChatCompletionResponse", body)
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert len({choice["message"]["content"] for choice in body["choices"]}) > 1  # sampled apart
    assert body["usage"]["completion_tokens"] == 18
    again = (await post_chat(messages=HELLO, n=3, max_tokens=6, ignore_eos=True, temperature=1.2, seed=5)).json()
    assert [c["message"]["content"] for c in again["choices"]] == [c["message"]["content"] for c in body["choices"]]


async def test_n_choices_stream_with_their_indexes(use_config) -> None:
    chunks = await stream(messages=HELLO, n=2, max_tokens=5, ignore_eos=True, stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    finished = {}
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finished[choice["index"]] = choice["finish_reason"]
    assert finished == {0: "length", 1: "length"} and all(texts.values())
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10


async def test_logprobs_in_openai_chat_shape(use_config) -> None:
    body = (
        await post_chat(messages=HELLO, max_tokens=5, ignore_eos=True, logprobs=True, top_logprobs=3, temperature=0)
    ).json()
    validate_openai("CreateChatCompletionResponse", body)
    entries = body["choices"][0]["logprobs"]["content"]
    assert len(entries) == 5
    assert "".join(entry["token"] for entry in entries) == body["choices"][0]["message"]["content"]
    for entry in entries:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode(errors="replace") == entry["token"]
        assert len(entry["top_logprobs"]) == 3
        # Greedy: the chosen token is the likeliest one.
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert abs(entry["top_logprobs"][0]["logprob"] - entry["logprob"]) < 1e-6
    chunks = await stream(messages=HELLO, max_tokens=4, ignore_eos=True, logprobs=True, temperature=0)
    streamed = [e for chunk in chunks for c in chunk["choices"] if c["logprobs"] for e in c["logprobs"]["content"]]
    assert len(streamed) == 4 and all(entry["top_logprobs"] == [] for entry in streamed)


async def test_json_object_output_parses(use_config) -> None:
    messages = [{"role": "user", "content": "Describe a cat as a JSON object with a name and an age."}]
    body = (
        await post_chat(messages=messages, response_format={"type": "json_object"}, max_tokens=200, temperature=0)
    ).json()
    choice = body["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:  # a small model may nest objects until max_tokens: reported honestly as "length"
        assert choice["finish_reason"] == "length" and choice["message"]["content"].lstrip().startswith("{")


async def test_a_required_tool_call_is_returned_as_tool_calls(use_config) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = (await post_chat(messages=messages, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=60)).json()
    validate_openai("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
    named = {"type": "function", "function": {"name": "get_weather"}}
    chunks = await stream(messages=messages, tools=[WEATHER_TOOL], tool_choice=named, max_tokens=60)
    calls = [c["delta"]["tool_calls"] for chunk in chunks for c in chunk["choices"] if c["delta"].get("tool_calls")]
    assert calls and calls[0][0]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_results_in_the_history_are_accepted(use_config) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
    ]
    body = (await post_chat(messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=30)).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] and "tool_calls" not in choice["message"]
    assert body["usage"]["prompt_tokens"] > 40  # the call and its result are part of the prompt


@pytest.fixture(scope="module")
def tokenizer(smollm2_file: Path) -> Iterator[GenerationEngine]:
    engine = GenerationEngine(
        "tokenizer", smollm2_file, LoadSettings(n_ctx=256, n_gpu_layers=0, n_threads=1, n_threads_batch=1)
    )
    yield engine
    engine.close()


async def test_logit_bias_bans_and_forces_tokens(use_config, tokenizer: GenerationEngine) -> None:
    first = (await post_chat(messages=HELLO, max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)).json()
    top = first["choices"][0]["logprobs"]["content"][0]["top_logprobs"]

    def whole_token(entry: dict) -> bool:  # not a piece of a multi-byte character
        try:
            text = bytes(entry["bytes"]).decode()
        except UnicodeDecodeError:
            return False
        return len(tokenizer.tokenize(text, add_special=False)) == 1

    alternatives = [entry["token"] for entry in top if whole_token(entry)]
    assert top[0]["token"] in alternatives
    ids = [tokenizer.tokenize(text, add_special=False) for text in alternatives]
    banned = (
        await post_chat(
            messages=HELLO,
            max_tokens=1,
            temperature=0,
            logprobs=True,
            logit_bias={str(tokens[0]): -100 for tokens in ids},
        )
    ).json()
    assert banned["choices"][0]["logprobs"]["content"][0]["token"] not in alternatives
    forced_id = tokenizer.tokenize(" banana", add_special=False)[0]
    forced = (await post_chat(messages=HELLO, max_tokens=1, temperature=0, logit_bias={str(forced_id): 100})).json()
    assert forced["choices"][0]["message"]["content"] == tokenizer.model.piece(forced_id).decode()


async def test_greedy_answers_the_same_with_or_without_the_sampler_chain(use_config) -> None:
    """A greedy request with nothing else to sample by takes the argmax of the logits without
    llama.cpp's chain (runtime.llama.sampling); a bias of 0 changes no logit but runs the chain."""
    story = [{"role": "user", "content": "Tell me a story about a lighthouse."}]
    fast = (await post_chat(messages=story, max_tokens=40, temperature=0)).json()
    chained = (await post_chat(messages=story, max_tokens=40, temperature=0, logit_bias={"7": 0})).json()
    assert fast["usage"]["completion_tokens"] > 20
    assert fast["choices"][0]["message"]["content"] == chained["choices"][0]["message"]["content"]


def test_only_a_plain_greedy_request_skips_the_sampler_chain() -> None:
    def job(**sampling: Any) -> CompletionJob:
        return CompletionJob(prompt="x", sampling=Sampling(**{"temperature": 0.0, "top_k": 40, **sampling}))

    assert greedy_alone(job())
    assert not greedy_alone(job(temperature=0.7))
    assert not greedy_alone(job(repeat_penalty=1.1))
    assert not greedy_alone(replace(job(), grammar='root ::= "a"'))
    assert not greedy_alone(replace(job(), logit_bias=((7, 0.0),)))


async def test_user_is_recorded(use_config) -> None:
    await post_chat(messages=HELLO, max_tokens=1, user="alice@example.com")
    record = await RequestRecord.objects.alatest("id")
    assert record.end_user == "alice@example.com"
