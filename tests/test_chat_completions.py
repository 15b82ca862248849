"""POST /v1/chat/completions with the real SmolLM2 model, through Django's async client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.test import AsyncClient

from inference.protocol import ChatRequest
from inference.runtime.errors import WorkerFailed
from inference.runtime.jobs import ChatJob, Generation, JobEvent, TextDelta
from inference.serving.chat import chat_completion_chunks
from tests.conftest import SMOLLM2, plain_answer, validate_openai

HELLO = [{"role": "user", "content": "Say hello."}]


async def post_chat(**body: Any) -> Any:
    return await AsyncClient().post("/v1/chat/completions", body, content_type="application/json")


async def stream_chunks(**body: Any) -> tuple[Any, list[dict], list[bytes]]:
    """The response, its decoded data events and the raw events."""
    response = await post_chat(stream=True, **body)
    raw = b"".join([part async for part in response.streaming_content])
    events = [event for event in raw.split(b"\n\n") if event]
    assert all(event.startswith(b"data: ") for event in events)
    assert events[-1] == b"data: [DONE]"
    return response, [json.loads(event[6:]) for event in events[:-1]], events


def text_of(chunks: list[dict]) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])


@pytest.mark.slow
async def test_non_streaming_response_validates_and_counts_tokens(use_config) -> None:
    response = await post_chat(messages=HELLO, max_tokens=8, ignore_eos=True, temperature=0)
    assert response.status_code == 200
    body = response.json()
    validate_openai("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == SMOLLM2
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8


@pytest.mark.slow
async def test_prompt_tokens_grow_with_the_prompt(use_config) -> None:
    short = (await post_chat(messages=HELLO, max_tokens=1)).json()["usage"]["prompt_tokens"]
    longer_messages = [{"role": "user", "content": "Say hello. " * 20}]
    longer = (await post_chat(messages=longer_messages, max_tokens=1)).json()["usage"]["prompt_tokens"]
    assert longer > short + 20


@pytest.mark.slow
async def test_streaming_chunks_validate_and_match_the_non_streamed_text(use_config) -> None:
    request = {"messages": HELLO, "max_tokens": 12, "temperature": 0}
    response, chunks, _ = await stream_chunks(**request)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    for chunk in chunks:
        validate_openai("CreateChatCompletionStreamResponse", chunk)
        assert chunk["object"] == "chat.completion.chunk" and "usage" not in chunk
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    plain = (await post_chat(**request)).json()["choices"][0]["message"]["content"]
    assert text_of(chunks) == plain


@pytest.mark.slow
async def test_stream_usage_on_request(use_config) -> None:
    _, chunks, _ = await stream_chunks(
        messages=HELLO, max_tokens=6, ignore_eos=True, stream_options={"include_usage": True}
    )
    for chunk in chunks:
        validate_openai("CreateChatCompletionStreamResponse", chunk)
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert chunks[-1]["usage"]["total_tokens"] == chunks[-1]["usage"]["prompt_tokens"] + 6


@pytest.mark.slow
async def test_temperature_zero_is_deterministic_and_seed_reproduces_sampling(use_config) -> None:
    greedy = [
        (await post_chat(messages=HELLO, max_tokens=10, temperature=0)).json()["choices"][0]["message"]["content"]
        for _ in range(2)
    ]
    assert greedy[0] == greedy[1]
    story = [{"role": "user", "content": "Tell me a story about a cat."}]
    seeded = [
        (await post_chat(messages=story, max_tokens=24, temperature=1.5, seed=seed, ignore_eos=True)).json()
        for seed in (7, 7, 8)
    ]
    texts = [body["choices"][0]["message"]["content"] for body in seeded]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


@pytest.mark.slow
async def test_stop_sequence_ends_the_answer_before_it(use_config) -> None:
    counting = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    free = (await post_chat(messages=counting, max_tokens=40, temperature=0)).json()
    free_text = free["choices"][0]["message"]["content"]
    assert "5" in free_text
    stopped = (await post_chat(messages=counting, max_tokens=40, temperature=0, stop=["5"])).json()
    text = stopped["choices"][0]["message"]["content"]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert "5" not in text and free_text.startswith(text)
    _, chunks, _ = await stream_chunks(messages=counting, max_tokens=40, temperature=0, stop="5")
    assert text_of(chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.slow
async def test_model_name_extension_is_optional_and_default_is_used(use_config) -> None:
    for model in (SMOLLM2, f"{SMOLLM2}.gguf", None):
        body = {"messages": HELLO, "max_tokens": 1}
        if model:
            body["model"] = model
        response = await post_chat(**body)
        assert response.status_code == 200, response.content
        assert response.json()["model"] == SMOLLM2


@pytest.mark.slow
async def test_text_parts_system_and_developer_roles_are_accepted(use_config) -> None:
    messages = [
        {"role": "developer", "content": "You are terse."},
        {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    response = await post_chat(messages=messages, max_tokens=4, presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9)
    assert response.status_code == 200, response.content
    assert response.json()["usage"]["prompt_tokens"] > 20


@pytest.mark.slow
async def test_max_tokens_beyond_the_context_stops_at_the_context_end(use_config) -> None:
    use_config(n_ctx=256)
    response = await post_chat(messages=HELLO, max_completion_tokens=500, ignore_eos=True)
    body = response.json()
    assert response.status_code == 200, body
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == 256


async def test_an_error_after_the_stream_started_is_one_error_event_then_the_end() -> None:
    async def failing_events() -> AsyncIterator[JobEvent]:
        yield TextDelta("partial", 1)
        raise WorkerFailed(model="m", cause="llama_decode returned -3")

    generation = Generation(model="m", prompt_tokens=3, events=failing_events())
    request = ChatRequest(model="m", job=ChatJob(messages=()))
    raw = b"".join([part async for part in chat_completion_chunks(plain_answer(generation), request)])
    events = [json.loads(event[6:]) for event in raw.split(b"\n\n") if event]
    assert [chunk["choices"][0]["delta"].get("content") for chunk in events[:2]] == ["", "partial"]
    validate_openai("ErrorResponse", events[-1])
    assert events[-1]["error"]["type"] == "server_error" and "model m failed" in events[-1]["error"]["message"]
    assert b"[DONE]" not in raw


@pytest.mark.slow
async def test_a_chat_format_lets_a_model_without_a_template_chat(use_config, models_dir, gemma_file) -> None:
    from tests.conftest import link_model

    link_model(gemma_file, models_dir, "gemma-base")
    link_model(gemma_file, models_dir, "gemma-odd")
    use_config(models={"gemma-base": {"chat_format": "chatml"}, "gemma-odd": {"chat_format": "no-such-format"}})
    response = await post_chat(model="gemma-base", messages=HELLO, max_tokens=4, temperature=0)
    assert response.status_code == 200, response.content
    assert response.json()["usage"]["prompt_tokens"] > 3
    odd = await post_chat(model="gemma-odd", messages=HELLO, max_tokens=4)
    assert odd.status_code == 503
    assert "unknown chat_format 'no-such-format'" in odd.json()["error"]["message"]
    assert "chatml" in odd.json()["error"]["message"]


@pytest.mark.slow
async def test_usage_reports_prompt_tokens_found_in_the_cache(use_config) -> None:
    first = (await post_chat(messages=HELLO, max_tokens=2)).json()["usage"]
    again = (await post_chat(messages=HELLO, max_tokens=2)).json()
    validate_openai("CreateChatCompletionResponse", again)
    usage = again["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens_details"]["cached_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1  # the last is redone
