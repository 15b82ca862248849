"""The prompt a chat model sees, and how its answer is read.

A model's conversations are rendered with its own chat template (config.json's `chat_template`,
else the GGUF's): tools, earlier calls, tools' results and earlier thinking as the template writes
them, its call and thinking markup learned by rendering (`inference.templates`). A template that
renders no tools gets the conversation with calls and results written as text, and the generic
instruction (`serving.tools`). A model with a named `chat_format` is rendered by the runtime.

Thinking: a request asks for less of it than the model's `reasoning_budget` with an effort or a
token budget (`EFFORT_BUDGETS`); "none" turns it off (the template's own switch where it has one,
else the thinking is closed before it starts).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any

from inference.config import ModelSettings
from inference.errors import InvalidRequest
from inference.protocol import ChatRequest
from inference.protocol.tool_calls import Tool, Turn, images_of
from inference.runtime.catalog import ModelFile
from inference.runtime.errors import TemplateRejected
from inference.runtime.gguf_header import GGUFError, read_gguf_info
from inference.runtime.jobs import ChatJob, Thinking
from inference.runtime.pool import model_pool
from inference.serving import tools as generic
from inference.templates import GENERIC_MARKUP, AnswerParser, ChatTemplate, Markup, TemplateFailed, compiled

# Tokens of thinking each reasoning effort allows (None: as many as the model's budget).
EFFORT_BUDGETS: dict[str, int | None] = {"none": 0, "minimal": 256, "low": 1024, "medium": 4096, "high": None}


@dataclass(frozen=True)
class ModelFormat:
    """How one model's conversations are written: its template (None: rendered by the runtime
    with its named chat_format, or refused there: it has no template) and its settings."""

    model: str
    template: ChatTemplate | None
    settings: ModelSettings
    reads_effort: bool = False  # the template reads a `reasoning_effort` (gpt-oss: "Reasoning: low")


async def model_format(
    requested: str | None, allowed: list[str] | None, conversation: tuple[Turn, ...] = ()
) -> ModelFormat:
    """The requested model's format (raises ModelNotFound, TemplateRejected, and InvalidRequest
    for a conversation's images it cannot see); its header, saved settings and template's
    markup are read off the event loop."""
    pool = model_pool()
    model_file = pool.catalog.resolve(requested, allowed=allowed)
    _images_check(model_file, conversation)
    worker = pool.worker(model_file.name)
    return await asyncio.to_thread(_format_of, model_file, worker.settings if worker is not None else None)


def _images_check(model_file: ModelFile, conversation: tuple[Turn, ...]) -> None:
    """Refuse images before the model loads, for a model without a projector."""
    image = next(iter(images_of(conversation)), None)
    if image is not None and not model_file.projector:
        raise InvalidRequest(
            f"model {model_file.name} takes text only (no multimodal projector): {image.part}", param=image.part
        )


def _format_of(model_file: ModelFile, loaded: ModelSettings | None) -> ModelFormat:
    pool = model_pool()
    name = model_file.name
    settings = loaded or pool.config.settings_for(name, pool.settings_overrides(name))
    if settings.chat_format and not settings.chat_template:
        return ModelFormat(name, None, settings)
    try:
        info = read_gguf_info(model_file.path)
    except GGUFError:  # its load fails and says why
        return ModelFormat(name, None, settings)
    source = settings.chat_template or info.chat_template
    if not source:  # the runtime says so once the model loads (a file that cannot load says that)
        return ModelFormat(name, None, settings)
    try:
        template = compiled(source, info.bos_token, info.eos_token)
        template.markup  # noqa: B018  # learned once per template, here off the event loop
    except TemplateFailed as failed:
        raise TemplateRejected(model=name, detail=str(failed)) from None
    return ModelFormat(name, template, settings, reads_effort="reasoning_effort" in source)


@dataclass(frozen=True)
class AnswerReading:
    """How a model's answer is read: its markup, whether the prompt left it thinking, whether
    thinking is kept apart, and the tools whose calls are looked for."""

    markup: Markup
    thinking_open: bool = False
    split_thinking: bool = True
    tools: tuple[dict[str, Any], ...] = ()
    parse_calls: bool = False
    parallel: bool = True

    def parser(self) -> AnswerParser | None:
        """A parser for one choice's text; None when the text is all answer (no tools offered,
        no thinking to split)."""
        if not self.parse_calls and (self.markup.thinking is None or not self.split_thinking):
            return None
        return AnswerParser(
            self.markup,
            tools=self.tools,
            thinking_open=self.thinking_open,
            split_thinking=self.split_thinking,
            parse_calls=self.parse_calls,
        )


PLAIN_READING = AnswerReading(GENERIC_MARKUP)


@dataclass(frozen=True)
class ChatPrompt:
    """A request's conversation rendered for its model, and how to read the answer."""

    job: ChatJob
    reading: AnswerReading
    native_calls: bool  # calls are written in the template's markup (else the generic JSON)
    offered: tuple[Tool, ...]


async def chat_prompt(request: ChatRequest, form: ModelFormat, *, compact_tools: bool = False) -> ChatPrompt:
    """The request's job with its conversation rendered (off the event loop) and its thinking
    bounded; raises TemplateRejected (a 400) when the template fails on it."""
    return await asyncio.to_thread(_chat_prompt, request, form, compact_tools)


def _chat_prompt(request: ChatRequest, form: ModelFormat, compact_tools: bool) -> ChatPrompt:
    offered = _offered(request)
    tools = _tool_dicts(offered)
    if form.template is None:
        messages = generic.flat_messages(request.conversation, offered, request.tool_call_forced, compact_tools)
        reading = replace(PLAIN_READING, tools=tools, parse_calls=bool(offered))
        return ChatPrompt(replace(request.job, messages=messages), reading, False, offered)
    template, markup = form.template, form.template.markup
    kwargs, budget = _thinking_settings(request, form, markup)
    native = markup.renders_tools and markup.calls is not None
    try:
        prompt = _rendered(template, request, kwargs, native, compact_tools)
    except TemplateFailed as failed:
        if not native:
            raise TemplateRejected(model=form.model, detail=str(failed)) from None
        try:  # a template that renders tools, but not this conversation's
            native, prompt = False, _rendered(template, request, kwargs, False, compact_tools)
        except TemplateFailed:
            raise TemplateRejected(model=form.model, detail=str(failed)) from None
    if not native:
        markup = replace(markup, calls=GENERIC_MARKUP.calls)
    thinking_open = markup.thinking is not None and markup.thinking_open(prompt)
    if markup.thinking is not None and thinking_open and (budget == 0 or _output_constrained(request)):
        prompt, thinking_open = prompt + markup.thinking.end, False  # answer at once
    raw = request.thinking.raw if request.thinking.raw is not None else form.settings.reasoning_format == "none"
    reading = AnswerReading(
        markup,
        thinking_open=thinking_open,
        split_thinking=not raw,
        tools=tools,
        parse_calls=bool(offered),
        parallel=request.parallel_tool_calls,
    )
    thinking = None
    if markup.thinking is not None:
        thinking = Thinking(markup.thinking.start, markup.thinking.end, open=thinking_open, budget=budget)
    images = tuple(image.data for image in images_of(request.conversation))
    job = replace(request.job, prompt_text=prompt, thinking=thinking, markup=markup.texts(), images=images)
    return ChatPrompt(job, reading, native, offered)


def _offered(request: ChatRequest) -> tuple[Tool, ...]:
    """The tools the model may call: none for tool_choice "none", one for a named function."""
    if not request.tool_calls_possible:
        return ()
    if request.tool_choice.startswith("function:"):
        name = request.tool_choice.removeprefix("function:")
        return tuple(tool for tool in request.tools if tool.name == name)
    return request.tools


def _rendered(
    template: ChatTemplate, request: ChatRequest, kwargs: dict[str, Any], native: bool, compact_tools: bool
) -> str:
    """The conversation through the template: natively (the tools, calls and results in its
    markup), or with calls and results as text and the generic instruction offering the tools."""
    offered = _offered(request)
    if native:
        messages = [_message(turn) for turn in request.conversation]
        shown = tuple(generic.in_short(tool) for tool in offered) if compact_tools else offered
        tools = list(_tool_dicts(shown)) or None
    else:
        flat = generic.flat_messages(request.conversation, offered, request.tool_call_forced, compact_tools)
        messages, tools = [{"role": message.role, "content": message.content} for message in flat], None
    return template.render(messages, tools=tools, add_generation_prompt=True, kwargs=kwargs)


def _message(turn: Turn) -> dict[str, Any]:
    """A turn as Hugging Face templates read messages (arguments as objects, as most expect)."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call.arguments)},
            }
            for call in turn.calls
        ]
    if turn.reasoning:
        message["reasoning_content"] = turn.reasoning
    if turn.role == "tool":
        message.update(tool_call_id=turn.call_id, name=turn.name)
    return message


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _tool_dicts(offered: tuple[Tool, ...]) -> tuple[dict[str, Any], ...]:
    return tuple(
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in offered
    )


def _thinking_settings(request: ChatRequest, form: ModelFormat, markup: Markup) -> tuple[dict[str, Any], int | None]:
    """The template's kwargs (config.json's, then the request's, then what turns thinking off)
    and the thinking budget in tokens (None: no limit)."""
    ask = request.thinking
    kwargs = {**form.settings.chat_template_kwargs, **ask.template_kwargs}
    bounds = [form.settings.reasoning_budget if form.settings.reasoning_budget >= 0 else None]
    if ask.effort is not None:
        bounds.append(EFFORT_BUDGETS[ask.effort])
        if ask.effort in ("low", "medium", "high") and form.reads_effort:
            kwargs.setdefault("reasoning_effort", ask.effort)
    if ask.budget_tokens is not None:
        bounds.append(ask.budget_tokens)
    budget = min((bound for bound in bounds if bound is not None), default=None)
    if budget == 0 and markup.thinking is not None and markup.thinking.disable:
        kwargs.update(markup.thinking.disable)
    return kwargs, budget


def _output_constrained(request: ChatRequest) -> bool:
    """A response format makes the whole answer JSON: no room for thinking before it."""
    return (request.response_format or {"type": "text"})["type"] != "text" and not request.tool_call_forced
