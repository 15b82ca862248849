"""oneOf, which a grammar can only enforce as anyOf: accepted where no value written for one
alternative is valid against another, refused (with a hint to use anyOf) where that is not sure.

Alternatives are told apart by their types, their constants, or a required property that the other
forbids or whose values exclude each other's; a oneOf of many constants is checked in one pass,
not by pairs. Each check is charged to the grammar's budget; one OneOf per check, on the thread
building the grammar.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from inference.grammar.budget import EXCLUDES_STEPS, Budget
from inference.grammar.keywords import MAX_PATH, TYPES, Path, Schema, SchemaNotSupported, constrains
from inference.grammar.values import canonical, constant_values, json_type, schema_types


class OneOf:
    """oneOf is enforced as anyOf: only where no value can satisfy two of its alternatives."""

    def __init__(self, resolve: Callable[[str, Path], tuple[Schema, Path]], budget: Budget) -> None:
        self.resolve = resolve
        self.budget = budget

    def check(self, written: list[Schema], alternatives: list[Schema], path: Path) -> None:
        """Refuse the oneOf unless no value written for one alternative (`written`: as the grammar
        writes it, with the keywords beside the oneOf) satisfies another of `alternatives`."""
        if self._constants_apart(written, alternatives):
            return
        for index, one in enumerate(written):
            for other, alternative in enumerate(alternatives):
                if other != index and not self._excludes(one, alternative, 0):
                    raise SchemaNotSupported(
                        "oneOf", path, "has alternatives that may overlap, which a grammar cannot forbid (use anyOf)"
                    )

    def _constants_apart(self, written: list[Schema], alternatives: list[Schema]) -> bool:
        """Whether every alternative is a list of constants (enum, const) and no constant is in
        two of them: the common oneOf of many constants, told in one pass rather than by pairs."""
        owners: dict[str, set[int]] = defaultdict(set)  # a constant -> the alternatives that allow it
        for index, alternative in enumerate(alternatives):
            keys = _constant_keys(alternative) if isinstance(alternative, dict) else None
            if keys is None:
                return False
            self.budget.spend(EXCLUDES_STEPS + len(keys))
            for key in keys:
                owners[key].add(index)
        for index, one in enumerate(written):
            keys = _constant_keys(one) if isinstance(one, dict) else None
            if keys is None or any(owners[key] - {index} for key in keys if key in owners):
                return False
        return True

    def _excludes(self, first: Schema, second: Schema, depth: int) -> bool:
        """Whether no value the grammar writes for `first` is valid against `second` (False when
        not sure)."""
        self.budget.spend(EXCLUDES_STEPS)
        first, second = self._plain(first), self._plain(second)
        if depth > MAX_PATH or not (isinstance(first, dict) and isinstance(second, dict)):
            return False
        if any(key in schema for schema in (first, second) for key in ("anyOf", "oneOf", "allOf", "$ref")):
            return False
        if not _types_overlap(_written_types(first), _valid_types(second)):
            return True
        constants = [_constant_keys(first), _constant_keys(second)]
        if constants[0] is not None and constants[1] is not None and constants[0].isdisjoint(constants[1]):
            return True
        if set(_written_types(first)) != {"object"}:
            return False
        required = set(first.get("required", ()))
        forbidden = second.get("additionalProperties") is False and required - set(second.get("properties", {}))
        first_properties, second_properties = first.get("properties", {}), second.get("properties", {})
        return bool(forbidden) or any(
            name in first_properties
            and name in second_properties
            and self._excludes(first_properties[name], second_properties[name], depth + 1)
            for name in required & set(second.get("required", ()))
        )

    def _plain(self, schema: Schema) -> Schema:
        """The schema a bare `{"$ref": ...}` points to (annotations beside it aside)."""
        for _ in range(MAX_PATH):
            if not (isinstance(schema, dict) and "$ref" in schema) or any(
                constrains(key) for key in schema if key != "$ref"
            ):
                break
            schema = self.resolve(schema["$ref"], ())[0]
        return schema


def _written_types(schema: dict[str, Any]) -> list[str]:
    if "enum" in schema or "const" in schema:
        return sorted({json_type(value) for value in constant_values(schema)})
    return schema_types(schema)


def _valid_types(schema: dict[str, Any]) -> list[str]:
    """The types of the values a validator accepts (a superset)."""
    if "enum" in schema or "const" in schema:
        return _written_types(schema)
    declared = schema.get("type", list(TYPES))
    return [declared] if isinstance(declared, str) else list(declared)


def _types_overlap(first: list[str], second: list[str]) -> bool:
    numbers = {"integer", "number"}
    return any(a == b or {a, b} == numbers for a in first for b in second)


def _constant_keys(schema: dict[str, Any]) -> set[str] | None:
    if "enum" not in schema and "const" not in schema:
        return None
    return {canonical(value) for value in constant_values(schema)}
