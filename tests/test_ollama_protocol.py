"""Ollama's requests read into the other APIs' requests, and answers written in Ollama's shape:
names, options, formats, thinking, images, tool calls (their arguments objects), keep_alive as Go
writes durations; NDJSON lines with whole tool calls and the thinking apart, an error mid-stream
as one `{"error"}` line. In-process, no model loaded."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.exceptions import ValidationError

from inference.protocol.chat import ThinkingAsk
from inference.protocol.ollama import (
    OllamaChatRequestSerializer,
    OllamaEmbeddingsRequestSerializer,
    OllamaEmbedRequestSerializer,
    OllamaGenerateRequestSerializer,
    OllamaGeneration,
    OllamaPullRequestSerializer,
)
from inference.protocol.ollama_output import pull_status
from inference.protocol.tool_calls import ToolCall, Turn
from inference.runtime.errors import WorkerFailed
from inference.runtime.jobs import (
    CompletionJob,
    FillInMiddle,
    Finished,
    Generation,
    JobEvent,
    Sampling,
    TextDelta,
    TokenLogprob,
)
from inference.serving.chat import StartedChat
from inference.serving.ollama import OllamaStarted, ollama_answer_body, ollama_answer_lines
from inference.serving.prompts import PLAIN_READING, AnswerReading
from inference.templates import GENERIC_MARKUP, ChatTemplate
from tests.test_vision_runtime import png

HI = [{"role": "user", "content": "Hi"}]
QWEN35 = Path(__file__).parent / "data" / "templates" / "Qwen3.5-4B.jinja"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def chat(**body: Any) -> OllamaGeneration:
    return OllamaChatRequestSerializer.parse({"model": "m", "messages": HI, **body})


def generate(**body: Any) -> OllamaGeneration:
    return OllamaGenerateRequestSerializer.parse({"model": "m", **body})


def refusal(parse: Any, **body: Any) -> str:
    with pytest.raises(ValidationError) as refused:
        parse({"model": "m", **body})
    return str(refused.value.detail)


# --- requests ------------------------------------------------------------------------------------


def test_names_latest_and_the_older_name_field() -> None:
    assert chat(model="smol:latest").model == "smol" and chat(model="smol:latest").named == "smol:latest"
    assert chat(model="a:7b").model == "a:7b"  # other tags are part of the name
    assert OllamaChatRequestSerializer.parse({"name": "old:latest", "messages": HI}).chat.model == "old"
    assert "model is required" in refusal(lambda body: OllamaChatRequestSerializer.parse({"messages": HI}))


def test_options_become_the_jobs_settings_and_loaders_options_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    options = {"temperature": 0.2, "top_k": 7, "top_p": 0.5, "min_p": 0.1, "seed": -3, "repeat_penalty": 1.1}
    with caplog.at_level(logging.INFO, logger="inference.protocol.ollama"):
        request = chat(options={**options, "num_predict": 5, "stop": ["\n"], "num_gpu": 99, "mirostat": 0, "x": 1})
    job = request.chat.job
    assert job.sampling == Sampling(**options) and job.max_tokens == 5 and job.stop == ("\n",)
    assert "num_gpu, mirostat" not in caplog.text and "mirostat, num_gpu" in caplog.text and "unknown: x" in caplog.text
    for unlimited in (0, -1, -2):  # as Ollama: only a positive num_predict bounds the answer
        assert chat(options={"num_predict": unlimited}).chat.job.max_tokens is None
    assert chat(options={"num_ctx": 65536}).num_ctx == 65536
    assert chat().stream is True and chat(stream=False).stream is False  # Ollama streams by default
    assert "temperature" in refusal(OllamaChatRequestSerializer.parse, messages=HI, options={"temperature": "hot"})
    assert "options" in refusal(OllamaChatRequestSerializer.parse, messages=HI, options=[1])


def test_format_think_and_keep_alive() -> None:
    assert chat(format="json").chat.response_format == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = chat(format=schema).chat
    assert request.response_format == {"type": "json_schema", "json_schema": {"schema": schema}}
    assert request.format_param == "format" and chat(format="").chat.response_format is None
    assert "format" in refusal(OllamaChatRequestSerializer.parse, messages=HI, format="yaml")
    assert chat().chat.thinking == ThinkingAsk() and chat(think=True).chat.thinking == ThinkingAsk()
    assert chat(think=False).chat.thinking == ThinkingAsk(effort="none")
    assert chat(think="high").chat.thinking == ThinkingAsk(effort="high")
    assert "think" in refusal(OllamaChatRequestSerializer.parse, messages=HI, think="max")
    durations = {"5m": 300, "1h30m": 5400, "1.5h": 5400, "300ms": 0.3, "45s": 45, 0: 0, "0": 0, -1: -1, "-5m": -1}
    for given, seconds in durations.items():
        request = chat(keep_alive=given)
        assert request.keep_alive == request.chat.job.keep_alive == pytest.approx(seconds), given
    assert "keep_alive" in refusal(OllamaChatRequestSerializer.parse, messages=HI, keep_alive="soon")


def test_messages_become_turns_with_images_calls_and_results() -> None:
    image = base64.b64encode(png(1)).decode()
    request = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": [image, f"data:image/png;base64,{image}"]},
            {
                "role": "assistant",
                "content": "",
                "thinking": "Hm.",
                "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
            },
            {"role": "tool", "content": "42", "tool_name": "f"},
        ],
        tools=[WEATHER],
    ).chat
    system, user, assistant, result = request.conversation
    assert system == Turn("system", "Be brief.")
    assert user.content.count("<__llamasite_image__>") == 2 and user.content.endswith("\nWhat is this?")
    assert [image.part for image in user.images] == ["messages[1].images[0]", "messages[1].images[1]"]
    assert assistant.calls == (ToolCall("call_2_0", "f", '{"a": 1}'),) and assistant.reasoning == "Hm."
    assert (result.role, result.content, result.call_id, result.name) == ("tool", "42", "call_2_0", "f")
    assert [tool.name for tool in request.tools] == ["get_weather"]
    refused = refusal(OllamaChatRequestSerializer.parse, messages=[{"role": "user", "content": "x", "images": ["!!"]}])
    assert "base64" in refused
    assistant_image = [{"role": "assistant", "content": "x", "images": [image]}]
    assert "Only user messages" in refusal(OllamaChatRequestSerializer.parse, messages=assistant_image)


def test_nothing_to_generate_only_loads() -> None:
    assert chat(messages=[]).chat is None and chat(messages=None).chat is None
    assert generate().chat is None and generate(prompt="").completion is None
    assert generate(keep_alive=0).keep_alive == 0


def test_generate_templated_raw_and_suffix() -> None:
    templated = generate(prompt="Why?", system="Be brief.", images=[base64.b64encode(png(2)).decode()]).chat
    assert [turn.role for turn in templated.conversation] == ["system", "user"]
    assert templated.conversation[1].images[0].part == "images[0]"
    raw = generate(prompt="The sky is", raw=True, options={"num_predict": 4})
    assert raw.chat is None and raw.completion.jobs == (CompletionJob(prompt="The sky is", max_tokens=4),)
    fill = generate(prompt="def f(", suffix="):\n    pass").completion
    assert fill.jobs[0].fill == FillInMiddle(prefix="def f(", suffix="):\n    pass")
    assert "never evaluated" in refusal(OllamaGenerateRequestSerializer.parse, prompt="x", template="{{ .Prompt }}")
    assert generate(prompt="x", template="").chat is not None
    assert "context" in refusal(OllamaGenerateRequestSerializer.parse, prompt="x", context=[1, 2, 3])
    assert "raw" in refusal(OllamaGenerateRequestSerializer.parse, prompt="x", raw=True, format="json")


def test_embed_pull_bodies() -> None:
    assert OllamaEmbedRequestSerializer.parse({"model": "m:latest", "input": "a"}).embedding.job.inputs == ("a",)
    assert OllamaEmbedRequestSerializer.parse({"model": "m", "input": ["a", "b"]}).embedding.model == "m"
    assert OllamaEmbeddingsRequestSerializer.parse({"model": "m", "prompt": "a"}).embedding.job.inputs == ("a",)
    assert "dimensions" in refusal(OllamaEmbedRequestSerializer.parse, input="a", dimensions=4)
    assert OllamaPullRequestSerializer.parse({"model": "hf://o/r/f.gguf"}).stream is True
    assert "not a URL" in refusal(OllamaPullRequestSerializer.parse)


def test_pull_states_as_ollamas_status_lines() -> None:
    snapshot = {"id": "abc", "name": "m", "state": "downloading", "received": 5, "total": 10, "message": ""}
    assert pull_status(snapshot) == {"status": "pulling m", "digest": "sha256:abc", "completed": 5, "total": 10}
    assert pull_status({**snapshot, "state": "connecting"}) == {"status": "pulling manifest"}
    assert pull_status({**snapshot, "state": "done"}) == {"status": "success"}
    assert pull_status({**snapshot, "state": "failed", "message": "HTTP 404"}) == {"error": "HTTP 404"}


# --- answers -------------------------------------------------------------------------------------


def started(events: AsyncIterator[JobEvent], reading: AnswerReading = PLAIN_READING) -> OllamaStarted:
    generation = Generation(model="m", prompt_tokens=7, events=events, load_ms=12.0)
    return OllamaStarted(StartedChat(generation, reading), begun=time.monotonic() - 0.5)


async def said(*texts: str, reason: str = "stop") -> AsyncIterator[JobEvent]:
    for number, text in enumerate(texts, start=1):
        yield TextDelta(text, number, logprobs=(TokenLogprob(text, -0.5, tuple(text.encode())),))
    yield Finished(reason, 7, len(texts))


async def lines_of(answer: OllamaStarted, request: OllamaGeneration) -> list[dict[str, Any]]:
    raw = b"".join([line async for line in ollama_answer_lines(answer, request)])
    return [json.loads(line) for line in raw.decode().splitlines()]


async def test_a_streamed_answer_and_its_closing_timings() -> None:
    request = chat(model="m:latest")
    *pieces, last = await lines_of(started(said("Hel", "lo")), request)
    assert [piece["message"] for piece in pieces] == [{"role": "assistant", "content": text} for text in ("Hel", "lo")]
    assert all(piece["model"] == "m:latest" and piece["created_at"].endswith("Z") for piece in pieces)
    assert last["done"] and last["done_reason"] == "stop" and last["eval_count"] == 2 and last["prompt_eval_count"] == 7
    assert last["load_duration"] == 12_000_000 and last["total_duration"] >= 500_000_000
    body = await ollama_answer_body(started(said("Hel", "lo")), generate(prompt="x", logprobs=True))
    assert body["response"] == "Hello" and [entry["token"] for entry in body["logprobs"]] == ["Hel", "lo"]


async def test_tool_calls_go_out_whole_with_object_arguments() -> None:
    reading = AnswerReading(GENERIC_MARKUP, tools=(WEATHER,), parse_calls=True)
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    *pieces, last = await lines_of(started(said(call[:20], call[20:]), reading), chat(tools=[WEATHER]))
    assert [piece["message"].get("tool_calls") for piece in pieces] == [
        [{"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]
    ]
    assert last["done_reason"] == "stop"
    body = await ollama_answer_body(started(said(call), reading), chat(tools=[WEATHER]))
    assert body["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


async def test_thinking_is_apart_from_the_answer() -> None:
    markup = ChatTemplate(QWEN35.read_text()).markup
    reading = AnswerReading(markup, thinking_open=True)
    body = await ollama_answer_body(started(said("Let me see.", "</think>", "Four."), reading), chat())
    assert body["message"]["thinking"] == "Let me see." and body["message"]["content"].strip() == "Four."
    generated = await ollama_answer_body(started(said("Hm", "</think>", "Yes"), reading), generate(prompt="x"))
    assert generated["thinking"] == "Hm" and generated["response"].strip() == "Yes"


async def test_an_error_mid_stream_is_one_error_line() -> None:
    async def failing() -> AsyncIterator[JobEvent]:
        yield TextDelta("Hi", 1)
        raise WorkerFailed(model="m", cause="llama_decode returned -3")

    *_, last = await lines_of(started(failing()), chat())
    assert set(last) == {"error"} and "llama_decode returned -3" in last["error"]
