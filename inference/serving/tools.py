"""Function calling for a model whose chat template renders no tools: tools described in the
prompt, calls and their results written as text.

Models are told, in a system message, which functions they may call and that a call is a JSON
object `{"name": ..., "arguments": {...}}` and nothing else (`templates.GENERIC_MARKUP` reads it
back). `tool_choice` "required" or a named function makes the call certain with a grammar built
from `call_schema`. Earlier calls and their results are written back as text every chat template
can render.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from inference.grammar import refs_under
from inference.protocol.tool_calls import Tool, Turn, merged_turns
from inference.runtime.jobs import ChatMessage


def flat_messages(
    conversation: tuple[Turn, ...], offered: tuple[Tool, ...], required: bool, compact: bool
) -> tuple[ChatMessage, ...]:
    """The conversation as role and text only: each call written as the model would have
    written it, each result as a user's message, consecutive turns of one role merged; the
    tools offered (if any) at the start of the system message."""
    turns = []
    for turn in conversation:
        if turn.role == "tool":
            turns.append(Turn("user", f"Result of the function {turn.name}: {turn.content}"))
        else:
            written = [_call_text(call.name, call.arguments) for call in turn.calls]
            turns.append(Turn(turn.role, "\n".join(part for part in (turn.content, *written) if part)))
    messages = [ChatMessage(turn.role, turn.content) for turn in merged_turns(turns)]
    if offered:
        offer = instruction(offered, required, compact=compact).content
        if messages and messages[0].role == "system":
            messages[0] = replace(messages[0], content=f"{offer}\n\n{messages[0].content}")
        else:
            messages.insert(0, ChatMessage("system", offer))
    return tuple(messages)


def _call_text(name: str, arguments: str) -> str:
    """An earlier call, written as the model would have written it."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = arguments
    return json.dumps({"name": name, "arguments": parsed})


def instruction(tools: tuple[Tool, ...], required: bool, *, compact: bool = False) -> ChatMessage:
    """The system message that offers the tools: each with its description and parameters'
    JSON schema, or (`compact`) with its parameters' names and types and the first sentence of
    its description, a tenth of the tokens for agents' long tool lists."""
    describe = _compact if compact else _in_full
    described = "\n".join(describe(tool) for tool in tools)
    when = "You must call one of them." if required else "Call one only if it helps to answer."
    return ChatMessage(
        role="system",
        content=(
            f"You can call these functions. {when} To call a function, answer with only a JSON "
            'object {"name": <function name>, "arguments": <arguments object>} and nothing '
            f"else.\nFunctions:\n{described}"
        ),
    )


def _in_full(tool: Tool) -> str:
    return (
        f"- {tool.name}: {tool.description or 'no description'}\n  parameters (JSON schema): "
        f"{json.dumps(tool.parameters, separators=(',', ':'))}"
    )


def _compact(tool: Tool) -> str:
    properties = tool.parameters.get("properties")
    required = tool.parameters.get("required")
    properties = properties if isinstance(properties, dict) else {}
    required = required if isinstance(required, list) else []
    parameters = ", ".join(
        f"{name}{'' if name in required else '?'}: {_type_of(schema)}" for name, schema in properties.items()
    )
    return f"- {tool.name}({parameters}): {_first_sentence(tool.description) or 'no description'}"


def in_short(tool: Tool) -> Tool:
    """The tool as `compact` describes it, for a template that renders tools itself: the first
    sentence of its description, its parameters' names and types only."""
    properties = tool.parameters.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = tool.parameters.get("required")
    shape: dict[str, Any] = {
        "type": "object",
        "properties": {name: {"type": _type_of(schema)} for name, schema in properties.items()},
    }
    if isinstance(required, list):
        shape["required"] = required
    return Tool(tool.name, _first_sentence(tool.description), shape)


def _type_of(schema: Any) -> str:
    kind = schema.get("type", "any") if isinstance(schema, dict) else "any"
    return "|".join(map(str, kind)) if isinstance(kind, list) else str(kind)


def _first_sentence(text: str, limit: int = 160) -> str:
    line = text.strip().split("\n", 1)[0]
    end = line.find(". ")
    sentence = line[: end + 1] if end >= 0 else line
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


def call_schema(tools: tuple[Tool, ...]) -> dict[str, Any]:
    """JSON schema of a call to one of the tools (for the grammar that forces a call). Each
    tool's parameters go under `$defs` as `tool-N`, their own `$ref`s rewritten to point there
    (`#/$defs/x` → `#/$defs/tool-N/$defs/x`), so they mean in the call what they meant alone."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": {"$ref": f"#/$defs/tool-{index}"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for index, tool in enumerate(tools)
    ]
    definitions = {
        f"tool-{index}": refs_under(tool.parameters or {"type": "object"}, f"#/$defs/tool-{index}")
        for index, tool in enumerate(tools)
    }
    call = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return {**call, "$defs": definitions}
