"""OpenAI's Responses API: a response is a chat completion that may continue a stored one, and
with `store` is kept when it finishes."""

from __future__ import annotations

from typing import Any

from inference.protocol.responses import ResponseRequest
from inference.protocol.responses_output import StartedResponse
from inference.services.responses import response_save, stored_response
from inference.serving.chat import chat_completion_create
from inference.serving.generate import Caller


async def response_create(*, request: ResponseRequest, caller: Caller) -> StartedResponse:
    """Start a Responses API response: a stored conversation it continues comes before its
    input (404 if there is none under this key); with `store`, the finished response is kept."""
    history: list[dict[str, Any]] = []
    chat = request.chat
    if request.previous_response_id:
        previous = await stored_response(request.previous_response_id, api_key=caller.api_key, param="previous_response_id")
        history = previous.conversation
        chat = request.continuing(history)
    generation = await chat_completion_create(request=chat, caller=caller, id_prefix="resp_")
    save = None
    if request.store:
        async def save(body: dict[str, Any]) -> None:
            await response_save(body=body, request=request, history=history, api_key=caller.api_key)
    return StartedResponse(generation, request, save)
