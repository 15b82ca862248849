"""Chat completions, for any API that speaks in messages: the request's job with its tools offered
and its output constrained, started on its model."""

from __future__ import annotations

import logging
from dataclasses import replace

from inference.errors import InvalidRequest
from inference.grammar import JSON_OBJECT_GRAMMAR, SchemaRefused, schema_grammar
from inference.protocol import ChatRequest
from inference.runtime.errors import PromptTooLong
from inference.runtime.jobs import ChatJob, ChatMessage, Generation
from inference.serving import tools
from inference.serving.generate import Caller, generation_start

logger = logging.getLogger(__name__)


async def chat_completion_create(*, request: ChatRequest, caller: Caller, id_prefix: str = "chatcmpl-") -> Generation:
    """Start a chat completion (its tools and response format applied); its id begins with
    `id_prefix`. A prompt too long with every tool described in full is tried again with the
    tools in short."""
    try:
        return await _start(request, caller, id_prefix, compact_tools=False)
    except PromptTooLong as too_long:
        if not request.tool_calls_possible:
            raise
        # Agents offer tools by the dozen; a small model's context may hold the conversation but
        # not every tool described in full.
        logger.info(
            "the prompt with %d tools described in full is %d tokens, more than %s's context (%d): "
            "offering them in short", len(request.tools), too_long.tokens, too_long.model, too_long.n_ctx,
        )
        return await _start(request, caller, id_prefix, compact_tools=True)


async def _start(request: ChatRequest, caller: Caller, id_prefix: str, *, compact_tools: bool) -> Generation:
    job = await chat_job(request, compact_tools=compact_tools)
    return await generation_start(
        model=request.model, jobs=[job], caller=caller, id_prefix=id_prefix, stream=request.stream,
        end_user=request.user,
    )


async def chat_job(request: ChatRequest, *, compact_tools: bool = False) -> ChatJob:
    """The request's job with its tools offered in the prompt (`compact_tools`: in short) and
    its output constrained: a forced tool call or a JSON response format becomes a grammar
    (built off the event loop, within a bound); a schema the grammar cannot enforce, or too
    complex to build, is a 400 naming where it was. Counting a prompt builds no grammar."""
    job, grammar = request.job, None
    schema, param = None, request.format_param
    messages = job.messages
    if request.tool_calls_possible:
        offered = request.tools
        if request.tool_choice.startswith("function:"):
            offered = tuple(tool for tool in offered if tool.name == request.tool_choice.removeprefix("function:"))
        offer = tools.instruction(offered, required=request.tool_call_forced, compact=compact_tools)
        messages = _with_system(messages, offer.content)
        if request.tool_call_forced:
            schema, param = tools.call_schema(offered), "tools"
    if job.count_only:
        return replace(job, messages=messages)
    response_format = request.response_format or {"type": "text"}
    if schema is None and response_format["type"] == "json_object":
        grammar = JSON_OBJECT_GRAMMAR
    elif schema is None and response_format["type"] == "json_schema":
        schema = response_format["json_schema"].get("schema") or {}
    if schema is not None:
        try:
            grammar = await schema_grammar(schema)
        except SchemaRefused as refused:
            what = "too complex to enforce" if refused.too_complex else "this server cannot enforce"
            raise InvalidRequest(f"'{param}' has a JSON schema {what}: {refused.reason}", param=param) from None
    return replace(job, messages=messages, grammar=grammar)


def _with_system(messages: tuple[ChatMessage, ...], text: str) -> tuple[ChatMessage, ...]:
    """Messages with `text` at the start of the system message (a new one if there is none):
    several templates accept a system message only first."""
    if messages and messages[0].role == "system":
        return (ChatMessage("system", f"{text}\n\n{messages[0].content}"), *messages[1:])
    return (ChatMessage("system", text), *messages)
