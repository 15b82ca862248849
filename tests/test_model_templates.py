"""Models as they are, end to end: SmolLM2's weights under real families' chat templates
(tests/data/templates/, set per model with `chat_template`). Tools are shown and calls forced in
the template's own markup and come back as each API's tool calls; thinking is kept apart,
counted and bounded; /apply-template shows what the model sees; a failing template is a 400.

Qwen3's and Qwen3.5's templates write ChatML, which SmolLM2 was trained on; Qwen3.5's
generation prompt opens `<think>`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import anthropic.types
import pydantic
import pytest
from django.test import AsyncClient

from inference.config import ConfigError, load_config
from inference.models import DiscoveredModel, RequestRecord
from tests.conftest import SMOLLM2, validate_openai

# Real-model generations of a second or two each.
pytestmark = pytest.mark.slow

TEMPLATES = Path(__file__).parent / "data" / "templates"
QWEN3 = str(TEMPLATES / "Qwen-Qwen3-0.6B.jinja")
QWEN35 = str(TEMPLATES / "Qwen3.5-4B.jinja")
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
STREAM_EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
MARKUP = ("<think>", "</think>", "<tool_call>", "</tool_call>")


async def post(path: str, **body: Any) -> Any:
    return await AsyncClient().post(path, body, content_type="application/json")


async def sse(path: str, **body: Any) -> list[dict[str, Any]]:
    """A stream's data payloads (without [DONE])."""
    response = await post(path, stream=True, **body)
    assert response.status_code == 200, response.content
    raw = b"".join([part async for part in response.streaming_content]).decode()
    frames = [frame for frame in raw.split("\n\n") if frame and frame != "data: [DONE]"]
    return [json.loads(frame.split("data: ", 1)[1]) for frame in frames]


def template(use_config: Any, path: str = QWEN3, **settings: Any) -> None:
    use_config(n_ctx=4096, temperature=0, models={SMOLLM2: {"chat_template": path, **settings}})


def no_markup(text: str | None) -> bool:
    return not any(marker in (text or "") for marker in MARKUP)


# --- tools --------------------------------------------------------------------------------------


async def test_a_forced_call_is_a_chat_tool_call_in_the_templates_markup(use_config) -> None:
    template(use_config)
    forced = {"tools": [{"type": "function", "function": WEATHER}], "tool_choice": "required", "max_tokens": 60}
    body = (
        await post("/v1/chat/completions", model=SMOLLM2, messages=QUESTION, parallel_tool_calls=False, **forced)
    ).json()
    validate_openai("CreateChatCompletionResponse", body)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None, choice
    [call] = choice["message"]["tool_calls"]  # parallel_tool_calls: false keeps one
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)

    chunks = await sse("/v1/chat/completions", model=SMOLLM2, messages=QUESTION, **forced)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    calls = [call for delta in deltas for call in delta.get("tool_calls", [])]
    first = calls[0]
    assert first["id"].startswith("call_") and first["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(call["function"]["arguments"] for call in calls if call["index"] == 0)
    assert isinstance(json.loads(arguments)["city"], str)
    assert all(no_markup(delta.get("content")) for delta in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_forced_call_is_a_tool_use_block_in_messages(use_config) -> None:
    template(use_config)
    forced = {
        "tools": [
            {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "max_tokens": 60,
    }
    body = (await post("/v1/messages", model=SMOLLM2, messages=QUESTION, **forced)).json()
    assert body["stop_reason"] == "tool_use", body
    [call] = body["content"]
    assert call["type"] == "tool_use" and call["name"] == "get_weather" and isinstance(call["input"]["city"], str)

    events = await sse("/v1/messages", model=SMOLLM2, messages=QUESTION, **forced)
    for event in events:
        if event["type"] != "ping":
            STREAM_EVENT.validate_python(event)
    starts = [event["content_block"] for event in events if event["type"] == "content_block_start"]
    assert starts == [{"type": "tool_use", "id": starts[0]["id"], "name": "get_weather", "input": {}}]
    partial = "".join(event["delta"]["partial_json"] for event in events if event["type"] == "content_block_delta")
    assert isinstance(json.loads(partial)["city"], str)


async def test_a_forced_call_is_a_function_call_item_in_responses(use_config) -> None:
    template(use_config)
    forced = {
        "tools": [{"type": "function", **WEATHER}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 60,
        "store": False,
    }
    body = (await post("/v1/responses", model=SMOLLM2, input="What is the weather in Paris?", **forced)).json()
    [call] = body["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather", body
    assert isinstance(json.loads(call["arguments"])["city"], str)

    events = await sse("/v1/responses", model=SMOLLM2, input="What is the weather in Paris?", **forced)
    added = [event["item"] for event in events if event["type"] == "response.output_item.added"]
    assert [item["type"] for item in added] == ["function_call"] and added[0]["name"] == "get_weather"
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.function_call_arguments.delta")
    [done] = [event for event in events if event["type"] == "response.function_call_arguments.done"]
    assert deltas == done["arguments"] and isinstance(json.loads(deltas)["city"], str)
    assert events[-1]["type"] == "response.completed"


async def test_earlier_calls_and_results_are_rendered_in_the_templates_own_shape(use_config) -> None:
    template(use_config)
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
    ]
    response = await post(
        "/apply-template", model=SMOLLM2, messages=history, tools=[{"type": "function", "function": WEATHER}]
    )
    assert response.status_code == 200, response.content
    prompt = response.json()["prompt"]
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt  # Qwen3's own tool section
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n21 C, sunny\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")  # the generation prompt
    assert "Result of the function" not in prompt  # not the generic way
    assert await RequestRecord.objects.filter(endpoint="/apply-template", status="ok").acount() == 1


# --- thinking -----------------------------------------------------------------------------------


async def test_thinking_is_kept_apart_and_bounded_in_chat(use_config) -> None:
    template(use_config, QWEN35, reasoning_budget=6)
    body = (await post("/v1/chat/completions", model=SMOLLM2, messages=QUESTION, max_tokens=40)).json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] and no_markup(message["reasoning_content"]), message
    assert no_markup(message["content"]), message
    assert 0 < body["usage"]["completion_tokens_details"]["reasoning_tokens"] <= 6
    record = await RequestRecord.objects.filter(endpoint="/v1/chat/completions").alatest("id")
    assert record.reasoning_tokens == body["usage"]["completion_tokens_details"]["reasoning_tokens"]

    chunks = await sse(
        "/v1/chat/completions", model=SMOLLM2, messages=QUESTION, max_tokens=40, stream_options={"include_usage": True}
    )
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    thought = "".join(delta.get("reasoning_content") or "" for delta in deltas)
    said = [index for index, delta in enumerate(deltas) if delta.get("content")]
    thought_at = [index for index, delta in enumerate(deltas) if delta.get("reasoning_content")]
    assert thought == message["reasoning_content"] and (not said or max(thought_at) < min(said))
    assert 0 < chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] <= 6


async def test_a_request_asks_for_less_thinking_never_more(use_config) -> None:
    template(use_config, QWEN35, reasoning_budget=6)
    anthropic_body = {"model": SMOLLM2, "messages": QUESTION, "max_tokens": 40}
    less = (await post("/v1/messages", thinking={"type": "enabled", "budget_tokens": 2}, **anthropic_body)).json()
    [thinking, *_] = less["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] and len(thinking["signature"]) == 64, less
    assert all(no_markup(block.get("text")) for block in less["content"])
    more = (await post("/v1/messages", thinking={"type": "enabled", "budget_tokens": 500}, **anthropic_body)).json()
    record = await RequestRecord.objects.filter(endpoint="/v1/messages").alatest("id")
    assert 0 < record.reasoning_tokens <= 6, more  # the model's budget caps the request's

    events = await sse("/v1/messages", thinking={"type": "enabled", "budget_tokens": 2}, **anthropic_body)
    for event in events:
        if event["type"] != "ping":
            STREAM_EVENT.validate_python(event)
    kinds = [event["delta"]["type"] for event in events if event["type"] == "content_block_delta"]
    assert kinds[0] == "thinking_delta" and "signature_delta" in kinds


async def test_thinking_is_a_reasoning_item_in_responses(use_config) -> None:
    template(use_config, QWEN35, reasoning_budget=4)
    body = (
        await post(
            "/v1/responses", model=SMOLLM2, input="Hi!", max_output_tokens=30, store=False, reasoning={"effort": "low"}
        )
    ).json()
    reasoning = body["output"][0]
    assert reasoning["type"] == "reasoning" and reasoning["content"][0]["type"] == "reasoning_text", body
    assert 0 < body["usage"]["output_tokens_details"]["reasoning_tokens"] <= 4

    events = await sse("/v1/responses", model=SMOLLM2, input="Hi!", max_output_tokens=30, store=False)
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.reasoning_text.delta")
    [done] = [event for event in events if event["type"] == "response.reasoning_text.done"]
    assert deltas and deltas == done["text"]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == deltas


@pytest.mark.parametrize(
    ("path", "off"),
    [
        ("/v1/chat/completions", {"reasoning_effort": "none"}),
        ("/v1/messages", {"thinking": {"type": "disabled"}}),
        ("/v1/responses", {"reasoning": {"effort": "none"}}),
    ],
)
async def test_thinking_turned_off_gives_none(use_config, path: str, off: dict[str, Any]) -> None:
    template(use_config, QWEN35)
    body: dict[str, Any] = {"model": SMOLLM2, "max_tokens": 20, "messages": QUESTION, **off}
    if path == "/v1/responses":
        body = {"model": SMOLLM2, "input": QUESTION, "max_output_tokens": 20, "store": False, **off}
    answer = (await post(path, **body)).json()
    assert "reasoning_content" not in json.dumps(answer) and '"thinking"' not in json.dumps(answer), answer
    record = await RequestRecord.objects.filter(endpoint=path).alatest("id")
    assert record.reasoning_tokens == 0 and record.status == "ok"
    # The template's own switch: its generation prompt closes the thinking.
    prompt = (await post("/apply-template", model=SMOLLM2, messages=QUESTION, reasoning_effort="none")).json()["prompt"]
    assert prompt.endswith("<think>\n\n</think>\n\n")


async def test_reasoning_format_none_leaves_the_thinking_in_the_answer(use_config) -> None:
    template(use_config, QWEN35, reasoning_budget=3)
    body = (
        await post("/v1/chat/completions", model=SMOLLM2, messages=QUESTION, max_tokens=20, reasoning_format="none")
    ).json()
    message = body["choices"][0]["message"]
    assert "reasoning_content" not in message and "</think>" in message["content"], message
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3  # still counted and bounded


# --- templates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("{{ raise_exception('System messages are not supported.') }}", "System messages are not supported."),
        ("{% for m in messages %}{{ m.content }", "unexpected '}'"),
    ],
)
async def test_a_failing_template_is_a_400_naming_the_model_and_its_message(
    use_config, source: str, detail: str
) -> None:
    use_config(models={SMOLLM2: {"chat_template": source}})
    response = await post("/v1/chat/completions", model=SMOLLM2, messages=QUESTION, max_tokens=5)
    assert response.status_code == 400, response.content
    message = response.json()["error"]["message"]
    assert SMOLLM2 in message and detail in message
    assert (await AsyncClient().get("/health")).status_code == 200  # still serving


async def test_a_template_file_is_read_relative_to_config_json(use_config, tmp_path: Path) -> None:
    shutil.copy(QWEN3, tmp_path / "qwen3.jinja")
    path = use_config(models={SMOLLM2: {"chat_template": "qwen3.jinja"}})
    assert load_config(path).model_manager.models[SMOLLM2]["chat_template"].startswith("{%")
    prompt = (
        await post(
            "/apply-template", model=SMOLLM2, messages=QUESTION, tools=[{"type": "function", "function": WEATHER}]
        )
    ).json()["prompt"]
    assert "<tools>" in prompt
    (tmp_path / "qwen3.jinja").unlink()
    with pytest.raises(ConfigError, match=r"model_manager\.models\..*\.chat_template: cannot read .*qwen3\.jinja"):
        load_config(path)


def test_the_admins_template_settings_are_overrides_and_empty_ones_are_not() -> None:
    row = DiscoveredModel(
        name="m", chat_template="", reasoning_budget=0, chat_template_kwargs={"enable_thinking": False}
    )
    assert row.setting_overrides() == {"reasoning_budget": 0, "chat_template_kwargs": {"enable_thinking": False}}
