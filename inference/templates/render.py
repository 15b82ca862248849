"""Rendering a model's own chat template (the Jinja text in its GGUF's `tokenizer.chat_template`)
the way Hugging Face transformers does: an immutable sandbox, trim_blocks and lstrip_blocks, the
loop-controls extension, and the globals and filters templates call (`raise_exception`,
`strftime_now`, `tojson` with HF's arguments, `bos_token`, `eos_token`, `tools`,
`add_generation_prompt`, plus the request's chat_template_kwargs).

A template is compiled once; rendering is pure and thread-safe. Every failure, the template's own
`raise_exception`, an undefined name, a sandbox violation or a runaway recursion, surfaces as
TemplateFailed with a one-line message, so a caller has one exception to turn into a 400.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:
    from inference.templates.markup import Markup


class TemplateFailed(Exception):
    """A chat template could not be compiled or rendered; the message is the template's own
    (its raise_exception text, or Jinja's error), on one line."""


class _Raised(Exception):
    """raise_exception() called by the template: its message is the whole story."""


def _raise_exception(message: str) -> NoReturn:
    raise _Raised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    indent: int | None = None,
    ensure_ascii: bool = False,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """HF transformers' tojson: no HTML escaping (unlike Jinja's own), unicode kept by default."""
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)


def _one_line(problem: BaseException) -> str:
    text = " ".join(str(problem).split()) or type(problem).__name__
    if isinstance(problem, jinja2.TemplateSyntaxError) and problem.lineno:
        return f"{text} (line {problem.lineno})"
    return text


def _with_thinking(message: Mapping[str, Any]) -> dict[str, Any]:
    """`message`, its reasoning_content also under `thinking`: gpt-oss's template reads that."""
    copied = dict(message)
    if copied.get("reasoning_content") and "thinking" not in copied:
        copied["thinking"] = copied["reasoning_content"]
    return copied


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


_ENVIRONMENT = _environment()


class ChatTemplate:
    """One model's chat template, compiled; renders prompts and learns (once, lazily) the markup
    its model writes for tool calls and thinking."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        try:
            self._template = _ENVIRONMENT.from_string(source)
        except jinja2.TemplateError as problem:
            raise TemplateFailed(_one_line(problem)) from problem

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text for `messages` (OpenAI-style dicts); raises TemplateFailed, never
        anything else, whatever the template does."""
        context = {
            **(kwargs or {}),
            "messages": [_with_thinking(message) for message in messages],
            "tools": [dict(tool) for tool in tools] if tools is not None else None,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            return self._template.render(context)
        except _Raised as problem:
            raise TemplateFailed(_one_line(problem)) from None
        except RecursionError:
            raise TemplateFailed("the template recursed too deeply") from None
        except Exception as problem:  # noqa: BLE001 - a template may fail in any way; one exception out
            raise TemplateFailed(_one_line(problem)) from problem

    @functools.cached_property
    def markup(self) -> Markup:
        """The tool-call and thinking markup this template writes, learned by rendering probes."""
        from inference.templates.learn import learn_markup

        return learn_markup(self)


@functools.lru_cache(maxsize=64)
def compiled(source: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
    """The template of this source, compiled once (and its markup learned once) per process."""
    return ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)
