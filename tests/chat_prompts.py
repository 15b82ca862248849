"""Chat jobs for tests that drive an engine directly: serving renders a model's template into
`ChatJob.prompt_text`, so these render SmolLM2's as the runtime itself once did (llama-cpp-python's
Jinja2 formatter on the GGUF's template, its BOS and EOS texts)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from inference.management.commands.install_default_model import bundled_default_model
from inference.runtime.gguf_header import read_gguf_info
from inference.runtime.jobs import ChatJob, ChatMessage


@cache
def _smollm2_formatter() -> Jinja2ChatFormatter:
    template = read_gguf_info(bundled_default_model()).chat_template
    assert template is not None
    return Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="<|im_start|>")


def smollm2_prompt(messages: Iterable[ChatMessage]) -> str:
    """The messages in SmolLM2's chat template, the assistant's turn begun."""
    plain = [{"role": message.role, "content": message.content} for message in messages]
    return _smollm2_formatter()(messages=plain).prompt  # type: ignore[arg-type]  # plain dicts, as templates read them


def smollm2_chat(messages: Iterable[ChatMessage], **fields: Any) -> ChatJob:
    """A chat job for SmolLM2 with its prompt rendered."""
    messages = tuple(messages)
    return ChatJob(messages=messages, prompt_text=smollm2_prompt(messages), **fields)
