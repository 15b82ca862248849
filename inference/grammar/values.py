"""JSON values as a schema names them: the types a schema asks for, a value's JSON type, when two
values are the same JSON (1 and 1.0 alike, true and 1 not), and the rule for a schema's `enum` and
`const` values, each written as JSON text.

Pure functions of their arguments; any thread.
"""

from __future__ import annotations

import json
from typing import Any

from inference.grammar.gbnf import literal_alternatives
from inference.grammar.keywords import FAMILIES, TYPES, Path, SchemaNotSupported, constrains


def schema_types(schema: dict[str, Any]) -> list[str]:
    """The types the grammar writes for a schema (without anyOf/oneOf/allOf/$ref): its `type`,
    else those whose keywords it uses, else all; "integer" is left out beside "number"."""
    declared = schema.get("type")
    if declared is None:
        types = [kind for kind, keywords in FAMILIES.items() if keywords & schema.keys()] or list(TYPES)
    else:
        types = [declared] if isinstance(declared, str) else list(declared)
    return [kind for kind in types if not (kind == "integer" and "number" in types)]


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def constant_values(schema: dict[str, Any]) -> list[Any]:
    """The values a schema's `enum` and `const` allow together."""
    values: list[Any] = schema["enum"] if "enum" in schema else [schema["const"]]
    if "enum" in schema and "const" in schema:
        values = [value for value in values if canonical(value) == canonical(schema["const"])]
    return values


def canonical(value: Any) -> str:
    """Equal for JSON-equal values (1 and 1.0 alike, true and 1 not)."""

    def normal(item: Any) -> Any:
        if isinstance(item, float) and item.is_integer():
            return int(item)
        if isinstance(item, list):
            return [normal(element) for element in item]
        if isinstance(item, dict):
            return {key: normal(element) for key, element in item.items()}
        return item

    return json.dumps(normal(value), sort_keys=True)


def constants_rule(schema: dict[str, Any], path: Path, types: list[str]) -> str:
    """Alternatives for the enum/const values of the schema's types."""
    keyword = "const" if "const" in schema else "enum"
    beside = [key for key in schema if constrains(key) and key not in ("type", "enum", "const")]
    if beside:
        raise SchemaNotSupported(beside[0], path, f"beside '{keyword}' is not supported")
    values: dict[str, Any] = {}
    for value in constant_values(schema):
        if _fits(value, types):
            values.setdefault(canonical(value), value)
    if not values:
        raise SchemaNotSupported(keyword, path, "has no value of the schema's type")
    return literal_alternatives([_json_text(value) for value in values.values()])


def _fits(value: Any, types: list[str]) -> bool:
    kind = json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def _json_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):  # a lone surrogate: not UTF-8
        text = json.dumps(value)
    return text
