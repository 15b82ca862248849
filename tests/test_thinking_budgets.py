"""How much a request may think, and how thinking is turned off: the model's `reasoning_budget`
bounds every request, a request's effort or token budget asks for less (serving.prompts), and
"none" uses the template's own switch where it has one; and how a thinking model's answer is
read (serving.answers). In-process, no model loaded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from inference.config import load_config
from inference.protocol import ChatRequest
from inference.protocol.chat import ThinkingAsk
from inference.protocol.tool_calls import Turn
from inference.runtime.jobs import ChatJob, Finished, Generation, JobEvent, TextDelta, TokenLogprob
from inference.serving.answers import answer_parts
from inference.serving.prompts import EFFORT_BUDGETS, ModelFormat, chat_prompt
from inference.templates import ChatTemplate, Content

TEMPLATES = Path(__file__).parent / "data" / "templates"


def model(name: str, **settings: Any) -> ModelFormat:
    source = (TEMPLATES / f"{name}.jinja").read_text()
    defaults = replace(load_config(Path("/nonexistent/config.json")).model_manager.defaults, **settings)
    return ModelFormat(name, ChatTemplate(source), defaults, reads_effort="reasoning_effort" in source)


def request(**ask: Any) -> ChatRequest:
    return ChatRequest(
        model=None, job=ChatJob(messages=()), conversation=(Turn("user", "Hi"),), thinking=ThinkingAsk(**ask)
    )


@pytest.mark.parametrize(
    ("model_budget", "ask", "expected"),
    [
        (-1, {}, None),
        (100, {}, 100),
        (-1, {"effort": "minimal"}, EFFORT_BUDGETS["minimal"]),
        (-1, {"effort": "low"}, EFFORT_BUDGETS["low"]),
        (-1, {"effort": "medium"}, EFFORT_BUDGETS["medium"]),
        (-1, {"effort": "high"}, None),
        (100, {"effort": "medium"}, 100),  # never more than the model's
        (5000, {"budget_tokens": 7}, 7),
        (3, {"budget_tokens": 7}, 3),
        (-1, {"effort": "none"}, 0),
    ],
)
async def test_the_budget_is_the_least_of_the_models_and_the_requests(
    model_budget: int, ask: dict[str, Any], expected: int | None
) -> None:
    prompt = await chat_prompt(request(**ask), model("Qwen3.5-4B", reasoning_budget=model_budget))
    assert prompt.job.thinking is not None and prompt.job.thinking.budget == expected


async def test_none_uses_the_templates_switch_or_closes_the_thinking_it_opened() -> None:
    switched = await chat_prompt(request(effort="none"), model("Qwen3.5-4B"))
    assert switched.job.prompt_text.endswith("<think>\n\n</think>\n\n") and not switched.reading.thinking_open
    opened = await chat_prompt(request(), model("Qwen3.5-4B"))
    assert opened.job.prompt_text.endswith("<think>\n") and opened.reading.thinking_open
    # R1 distill opens thinking when asked to think; turned off by a request's own kwargs instead
    # of its switch, the server closes it with the template's end marker.
    r1 = model("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", chat_template_kwargs={"enable_thinking": True})
    closed = await chat_prompt(request(effort="none", template_kwargs={"enable_thinking": True}), r1)
    assert closed.job.prompt_text.endswith("</think>") and not closed.reading.thinking_open


async def test_kwargs_come_from_config_then_the_request_and_effort_reaches_templates_that_read_it() -> None:
    qwen = model("Qwen-Qwen3-0.6B", chat_template_kwargs={"enable_thinking": False})
    assert (await chat_prompt(request(), qwen)).job.prompt_text.endswith("<think>\n\n</think>\n\n")
    on = await chat_prompt(request(template_kwargs={"enable_thinking": True}), qwen)
    assert on.job.prompt_text.endswith("<|im_start|>assistant\n")
    gpt_oss = await chat_prompt(request(effort="low"), model("openai-gpt-oss-120b"))
    assert "Reasoning: low" in (gpt_oss.job.prompt_text or "")


async def test_raw_reasoning_keeps_the_markup_in_the_answer() -> None:
    raw = await chat_prompt(request(raw=True), model("Qwen3.5-4B"))
    assert raw.reading.parser() is None  # no tools, nothing split: the text is the answer
    split = await chat_prompt(request(), model("Qwen3.5-4B", reasoning_format="auto"))
    assert split.reading.parser() is not None


async def test_logprobs_of_text_held_back_go_out_with_the_text() -> None:
    """Text that might begin a marker is held back by the answer's parser; its tokens' logprobs
    wait for it, and those of tokens that said nothing go out at the end."""
    prompt = await chat_prompt(request(), model("Qwen3.5-4B", reasoning_format="auto"))
    reading = replace(prompt.reading, thinking_open=False)
    held, said = TokenLogprob("<th", -0.5, tuple(b"<th")), TokenLogprob("e", -0.1, tuple(b"e"))

    async def events() -> AsyncIterator[JobEvent]:
        yield TextDelta("<th", 1, logprobs=(held,))
        yield TextDelta("e", 2, logprobs=(said,))
        yield Finished("length", 3, 2)

    parts = [part async for part in answer_parts(Generation(model="m", prompt_tokens=3, events=events()), reading)]
    contents = [part for part in parts if isinstance(part.event, Content)]
    assert "".join(part.event.text for part in contents) == "<the"
    assert [entry for part in contents for entry in part.logprobs] == [held, said]
