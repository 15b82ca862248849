"""JSON Schema's keywords as the grammar converter knows them: which it enforces, which it
refuses, which are annotations, what each one's value must be, and SchemaNotSupported, the
refusal that names the keyword and where it is (`properties.age.multipleOf`).

A schema's keywords are checked before the converter reads them, so the rest of the converter
may trust their types. Pure Python; the tables are read-only, so any thread may use them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

Path = tuple[str, ...]
Schema = Any  # a dict, or True / False

TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")
FORMATS = ("date", "time", "date-time", "uuid")
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "$schema",
        "$comment",
        "examples",
        "example",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$anchor",
        "$vocabulary",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "discriminator",
        "externalDocs",
        "xml",
    }
)
DEFINITIONS = frozenset({"$defs", "definitions"})
REFUSED = frozenset(
    {
        "multipleOf",
        "not",
        "if",
        "then",
        "else",
        "patternProperties",
        "propertyNames",
        "contains",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "unevaluatedProperties",
        "unevaluatedItems",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
    }
)
# Keywords that constrain one type only: a schema without `type` that uses them gets that type.
FAMILIES = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"}),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
}
# Path segments a schema may be nested in (about two per level): deeper is refused, not a crash.
MAX_PATH = 64


class SchemaNotSupported(Exception):
    """A schema the grammar cannot enforce: the keyword, where it is, and why."""

    def __init__(self, keyword: str, path: Path, reason: str) -> None:
        self.keyword = keyword
        self.location = ".".join((*path, keyword))
        self.reason = reason
        super().__init__(f"'{keyword}'{f' at {self.location}' if path else ''} {reason}")


def constrains(key: str) -> bool:
    """Whether a keyword asks something of values (not an annotation, definitions or `$id`)."""
    return key not in ANNOTATIONS and key not in DEFINITIONS and key != "$id" and not key.startswith("x-")


def check_keywords(schema: dict[str, Any], path: Path, checked: dict[tuple[str, int], Any]) -> None:
    """Refuse a keyword that is unknown, not enforced, or of the wrong type. `checked`: the
    list and object values already found fine (by keyword and id; kept, so that no other value
    takes their id), not walked again: a merged schema holds its parts' values."""
    if len(path) > MAX_PATH:
        raise SchemaNotSupported(path[-1], path[:-1], "is nested too deeply")
    for key, value in schema.items():
        seen = (key, id(value)) if isinstance(value, (list, dict)) else None
        if seen in checked:
            continue
        if key == "$id" and path:
            raise SchemaNotSupported(key, path, "is supported only at the top (it would change what $refs mean)")
        if not constrains(key):
            problem = _CHECKS["$defs"](value) if key in DEFINITIONS else None
        elif key in REFUSED:
            problem = "is not supported (a grammar cannot enforce it)"
        elif key in _CHECKS:
            problem = _CHECKS[key](value)
        else:
            problem = "is not a JSON Schema keyword this server knows"
        if problem:
            raise SchemaNotSupported(key, path, problem)
        if seen is not None:
            checked[seen] = value


def ref_problem(value: Any) -> str | None:
    """What is wrong with a `$ref`'s value, if anything (only local references are supported)."""
    if not isinstance(value, str):
        return "must be a string"
    return None if value.startswith("#") else f"must be local ('#' or '#/...'), not '{value}'"


def _is_schema(value: Any) -> bool:
    return isinstance(value, (bool, dict))


def _is_json(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return value is None or isinstance(value, (bool, int, str))


def _problem(ok: bool, expected: str) -> str | None:
    return None if ok else f"must be {expected}"


def _count_problem(value: Any) -> str | None:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return _problem(whole and not isinstance(value, bool) and value >= 0, "a non-negative integer")


def _type_problem(value: Any) -> str | None:
    kinds = [value] if isinstance(value, str) else value
    ok = isinstance(kinds, list) and bool(kinds) and all(kind in TYPES for kind in kinds)
    ok = ok and len(set(kinds)) == len(kinds)
    return _problem(ok, f"one of {', '.join(TYPES)} or a list of them")


def _schemas(value: Any) -> bool:
    return isinstance(value, list) and all(map(_is_schema, value))


def _schema_map(value: Any) -> bool:
    return isinstance(value, dict) and all(map(_is_schema, value.values()))


def _unique_items_problem(value: Any) -> str | None:
    return "is not supported when true" if value is True else _problem(value is False, "a boolean")


def _format_problem(value: Any) -> str | None:
    return None if value in FORMATS else f"must be one of {', '.join(FORMATS)}, not {json.dumps(value)}"


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "type": _type_problem,
    "enum": lambda value: _problem(isinstance(value, list) and bool(value) and _is_json(value), "a non-empty list"),
    "const": lambda value: _problem(_is_json(value), "a JSON value"),
    **dict.fromkeys(
        ("anyOf", "oneOf", "allOf"),
        lambda value: _problem(_schemas(value) and bool(value), "a non-empty list of schemas"),
    ),
    "$ref": ref_problem,
    **dict.fromkeys(("$defs", "properties"), lambda value: _problem(_schema_map(value), "an object of schemas")),
    "required": lambda value: _problem(
        isinstance(value, list) and all(isinstance(name, str) for name in value) and len(set(value)) == len(value),
        "a list of distinct strings",
    ),
    **dict.fromkeys(("additionalProperties", "additionalItems"), lambda value: _problem(_is_schema(value), "a schema")),
    "items": lambda value: _problem(_is_schema(value) or _schemas(value), "a schema or a list of schemas"),
    "prefixItems": lambda value: _problem(_schemas(value), "a list of schemas"),
    "uniqueItems": _unique_items_problem,
    **dict.fromkeys(("minItems", "maxItems", "minLength", "maxLength"), _count_problem),
    **dict.fromkeys(
        ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"),
        lambda value: _problem(
            isinstance(value, (int, float)) and not isinstance(value, bool) and _is_json(value), "a number"
        ),
    ),
    "pattern": lambda value: _problem(isinstance(value, str), "a string"),
    "format": _format_problem,
}
