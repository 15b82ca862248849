"""Anthropic's Messages API: a message is a chat completion; counting its tokens prepares it
without generating."""

from __future__ import annotations

from dataclasses import replace

from inference.protocol import MessagesRequest
from inference.runtime.jobs import Generation
from inference.serving.chat import chat_completion_create
from inference.serving.generate import Caller


async def message_create(*, request: MessagesRequest, caller: Caller) -> Generation:
    """Start an Anthropic message: the chat completion it is, its ids beginning with msg_."""
    return await chat_completion_create(request=request.chat, caller=caller, id_prefix="msg_")


async def message_tokens_count(*, request: MessagesRequest, caller: Caller) -> Generation:
    """Count the prompt of an Anthropic message: prepared exactly as message_create would (tools
    instruction included), on the model's worker, without generating; a recorded request too."""
    chat = replace(request.chat, job=replace(request.chat.job, count_only=True), stream=False)
    return await chat_completion_create(request=chat, caller=caller, id_prefix="msg_")
