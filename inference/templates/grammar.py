"""The grammar that forces a tool call written in the model's own markup (tool_choice "required"
or a named function): the template's call markers around each call, the name one of the tools,
the arguments valid against that tool's parameters schema (`inference.grammar`), after thinking
where the model thinks first.

Each tool's parameters (and, for per-argument tags, each parameter's schema) go under one
schema's `$defs`, so one conversion names their rules `call-tool-N` / `call-arg-N-M` and shares
the JSON primitives; the markup's own rules are written around them. Refusals are the grammar
package's: SchemaRefused naming the keyword, or too complex.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from inference.grammar import SchemaNotSupported, SchemaRefused, SchemaTooComplex, json_schema_grammar, refs_under
from inference.templates.markup import CallMarkup, CallStyle, Markup, ThinkingMarkup


def forced_call_grammar(
    markup: Markup, tools: Sequence[Mapping[str, Any]], *, parallel: bool, thinking_open: bool
) -> str:
    """GBNF (root `root`) for an answer that is exactly one call (one or more with `parallel`,
    where the markup allows several) to one of `tools`, in `markup`'s calls (GENERIC_MARKUP's
    JSON object where it has none); thinking first where it is open or may be opened."""
    calls = markup.calls or CallMarkup(style=CallStyle.JSON)
    functions = [tool["function"] for tool in tools]
    if not functions:
        raise SchemaRefused("no tools to call", too_complex=False)
    rules = _schema_rules(calls, functions)
    bodies = [_call(calls, index, function) for index, function in enumerate(functions)]
    rules.append("call ::= " + " | ".join(f"call-{index}" for index in range(len(bodies))))
    rules += [f"call-{index} ::= {body}" for index, body in enumerate(bodies)]
    more = f" ({_literal(calls.separator)} call)*" if parallel and calls.multiple else ""  # a call has its call_start
    section = f"{_literal(calls.section_start)} call{more} {_literal(calls.section_end)}"
    thinking, think_rules = _thinking(markup.thinking, thinking_open)
    rules += think_rules
    rules.insert(0, f"root ::= [ \\n]{{0,2}} {thinking}{section}")  # templates put a newline before thinking
    return "\n".join(rules) + "\n"


def _literal(text: str) -> str:
    """`text` as a GBNF literal ("" for none)."""
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]
    return f'"{escaped}"'


def _call(calls: CallMarkup, index: int, function: Mapping[str, Any]) -> str:
    name = json.dumps(function["name"], ensure_ascii=False)
    if calls.style is CallStyle.JSON:
        head = "{" + json.dumps(calls.name_key) + ": " + name + ", " + json.dumps(calls.arguments_key) + ": "
        call_id = (
            f'({_literal(", " + json.dumps(calls.id_key) + ": ")} "\\"" [a-zA-Z0-9]{{9}} "\\"")? '
            if calls.id_key
            else ""
        )
        body = f"{_literal(head)} call-tool-{index} {call_id}{_literal('}')}"
    elif calls.style is CallStyle.NAME_ARGS:
        call_id = f"{_literal(calls.id_marker)} [a-zA-Z0-9]{{9}} " if calls.id_marker else ""
        body = f"{_literal(function['name'])} {call_id}{_literal(calls.name_end)} call-tool-{index}"
    else:
        body = f"{_literal(function['name'])} {_literal(calls.name_end)} {_tagged_arguments(calls, index, function)}"
    return f"{_literal(calls.call_start)} {body} {_literal(calls.call_end)}"


def _properties(function: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], set[str]]:
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    return list(properties.items()), set(parameters.get("required") or ())


def _is_string(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "string" and not ({"enum", "const"} & schema.keys())


def _tagged_arguments(calls: CallMarkup, index: int, function: Mapping[str, Any]) -> str:
    """Each parameter in the schema's order: required ones always, the others optionally;
    strings any text without the value's closing marker, other values JSON of their schema."""
    properties, required = _properties(function)
    parts = []
    for number, (key, schema) in enumerate(properties):
        value = "call-free-value" if _is_string(schema) else f"call-arg-{index}-{number}"
        member = f"{_literal(calls.key_start + key + calls.key_end)} {value} {_literal(calls.value_end)}"
        parts.append(member if key in required else f"({member})?")
    return " ".join(parts) or '""'


def _schema_rules(calls: CallMarkup, functions: list[Mapping[str, Any]]) -> list[str]:
    """The JSON rules for every tool's arguments (and tagged parameters), as GBNF lines."""
    definitions: dict[str, Any] = {}
    for index, function in enumerate(functions):
        root = f"#/$defs/call-tool-{index}"
        parameters = function.get("parameters") or {"type": "object"}
        definitions[f"call-tool-{index}"] = refs_under(parameters, root)
        if calls.style is CallStyle.TAGGED:
            for number, (_, schema) in enumerate(_properties(function)[0]):
                if not _is_string(schema):
                    definitions[f"call-arg-{index}-{number}"] = refs_under(schema, root)
    schema = {"$defs": definitions, "anyOf": [{"$ref": f"#/$defs/{name}"} for name in definitions]}
    try:
        text = json_schema_grammar(schema)
    except SchemaNotSupported as problem:
        raise SchemaRefused(str(problem), too_complex=False) from problem
    except SchemaTooComplex as problem:
        raise SchemaRefused(str(problem), too_complex=True) from problem
    lines = [line for line in text.splitlines() if line and not line.startswith("root ::=")]
    missing = [name for name in definitions if not any(line.startswith(f"{name} ::=") for line in lines)]
    if missing:  # a name taken by another rule: the conversion chose another
        raise SchemaRefused(f"rule names collide ({', '.join(missing)})", too_complex=False)
    if calls.style is CallStyle.TAGGED:
        lines += _free_text("call-free-value", calls.value_end.strip() or calls.value_end)
    return lines


def _thinking(thinking: ThinkingMarkup | None, thinking_open: bool) -> tuple[str, list[str]]:
    """The grammar's start before the calls: thinking text and its end marker when thinking is
    open; an optional whole thinking block where the model may open one."""
    if thinking is None:
        return "", []
    rules = _free_text("call-thought", thinking.end.strip())
    block = f"call-thought {_literal(thinking.end)} [ \\n]{{0,3}} "
    if thinking_open:
        return block, rules
    return f"({_literal(thinking.start)} {block})? ", rules


def _free_text(name: str, stop: str) -> list[str]:
    """Rules for any text that does not contain `stop`: one rule per how much of `stop` the
    text ends with (the states of a KMP matcher), each free to end there."""
    if not stop:
        return [f"{name} ::= [^\\x00]*"]
    rules = []
    for state in range(len(stop)):
        moves: dict[int, list[str]] = {}
        for char in dict.fromkeys(stop):
            target = _next_state(stop, state, char)
            if target < len(stop):
                moves.setdefault(target, []).append(char)
        others = "".join(_class_char(char) for char in dict.fromkeys(stop))
        options = [f"[^{others}] {name}-0"]
        options += [f"[{''.join(_class_char(c) for c in chars)}] {name}-{target}" for target, chars in moves.items()]
        rules.append(f"{name}-{state} ::= | " + " | ".join(options))
    rules.append(f"{name} ::= {name}-0")
    return rules


def _next_state(stop: str, state: int, char: str) -> int:
    """How much of `stop` the text ends with after `char`, having ended with `state` of it."""
    text = stop[:state] + char
    for length in range(min(len(text), len(stop)), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0


def _class_char(char: str) -> str:
    if char in "\\]^-[":
        return "\\" + char
    if char == "\n":
        return "\\n"
    if char == "\t":
        return "\\t"
    if char == "\r":
        return "\\r"
    return char
