"""JSON Schema to GBNF: the grammar that lets llama.cpp's sampler write only JSON valid against a
schema (response_format json_schema, forced tool calls), and JSON_OBJECT_GRAMMAR for any object.

Every keyword of a schema is either enforced by the grammar or refused: SchemaNotSupported names
the keyword and where it is (`properties.age.multipleOf`); an invalid schema (a `$ref` to
nowhere, a keyword of the wrong type, an impossible range) is refused the same way. Annotations
(title, description, examples, default, `x-...`, ...) are accepted. Where a schema allows many
forms the grammar may allow fewer, never more: members in the schema's order, no members the
schema does not list unless `additionalProperties` asks for them, numbers in a range written
without exponent and with at most 15 significant digits, at most a little whitespace.

Enforced: type (one or a list), enum, const, anyOf, oneOf (alternatives that provably exclude
each other), allOf (merged: parts may not set one keyword differently), $ref (local, recursion
included) and $defs/definitions; minimum, maximum, exclusiveMinimum, exclusiveMaximum for
integers and numbers; minLength, maxLength, pattern (ECMA-262, `inference.grammar.pattern`),
format date, time, date-time, uuid; items, prefixItems, additionalItems, minItems, maxItems;
properties, required, additionalProperties. Refused: multipleOf, uniqueItems: true, not,
if/then/else, patternProperties, propertyNames, contains, min/maxProperties, dependentRequired,
dependentSchemas, unevaluated*, dynamic refs, other formats, unknown keywords; a string's
pattern, format or length together (only one of them); enum/const beside keywords but type.

This module walks the schema, one visit per subschema: it dispatches on $ref, allOf, anyOf/oneOf,
enum/const and type, and tells a recursive $ref from a left recursion. Its neighbours do the rest:
`keywords` (which keywords exist and what their values must be; SchemaNotSupported), `resolve`
($ref targets, allOf merged), `oneof` (when a oneOf can be enforced), `values` (types and
constants), `typed` (each type's own rule) and `rules` (the grammar's rules and primitives).

Follows llama.cpp's json-schema-to-grammar (examples/json_schema_to_grammar.py; MIT licence,
(c) the ggml authors): the same rule shapes for primitives, members and items. Pure Python: no
llama_cpp, no Django; a conversion's state belongs to the thread running it (the grammar thread,
`compiler`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from inference.grammar.budget import VISIT_STEPS, Budget
from inference.grammar.keywords import Path, Schema, SchemaNotSupported, check_keywords, constrains
from inference.grammar.oneof import OneOf
from inference.grammar.resolve import Resolver
from inference.grammar.rules import Rules
from inference.grammar.typed import Arrays, Objects, number_rule, string_rule
from inference.grammar.values import constants_rule, schema_types


def json_schema_grammar(schema: dict[str, Any], budget: Budget | None = None) -> str:
    """GBNF (start rule `root`) for JSON text valid against `schema`; raises SchemaNotSupported
    for a keyword it cannot enforce and for an invalid schema, SchemaTooComplex past the
    budget's steps or grammar size (default: the server's bound)."""
    converter = _Converter(schema, budget or Budget())
    root = converter.visit(schema, (), "root")
    converter.rules.define("root", root)
    return converter.rules.text()


class _Converter:
    """Turns one schema into rules, one visit per subschema; refuses what it cannot enforce."""

    def __init__(self, root: Schema, budget: Budget) -> None:
        self.budget = budget
        self.rules = Rules(budget)
        self._checked: dict[tuple[str, int], Any] = {}  # see check_keywords
        self.refs = Resolver(root, budget, self._checked)
        self._refs: dict[tuple[str, str], str] = {}  # ($ref, its siblings) -> rule name
        # $refs being expanded since the last "{" or "[": meeting one again is a left recursion.
        self._unconsumed: set[tuple[str, str]] = set()

    def visit(self, schema: Schema, path: Path, hint: str) -> str:
        """The name of a rule for JSON values valid against `schema` (some or all of them)."""
        if schema is True:
            return self.rules.primitive("value")
        if schema is False:
            raise SchemaNotSupported("false", path, "is a schema no value satisfies")
        self.budget.spend(VISIT_STEPS + len(schema))
        check_keywords(schema, path, self._checked)
        if "$ref" in schema:
            return self._ref(schema, path, hint)
        if "allOf" in schema:
            return self.visit(self.refs.merge([(schema, path)]), path, hint)
        if "anyOf" in schema or "oneOf" in schema:
            return self._union(schema, path, hint)
        types = schema_types(schema)
        if "enum" in schema or "const" in schema:
            self.budget.spend(len(schema.get("enum", ())))
            return self.rules.add(hint, constants_rule(schema, path, types))
        return self.rules.add(hint, " | ".join(self._typed(schema, path, hint, kind) for kind in types))

    def _typed(self, schema: dict[str, Any], path: Path, hint: str, kind: str) -> str:
        if kind in ("null", "boolean"):
            return self.rules.primitive(kind)
        if kind in ("integer", "number"):
            return number_rule(self.rules, schema, path, hint, integer=kind == "integer")
        if kind == "string":
            return string_rule(self.rules, schema, path, hint)
        with self._consuming():
            builder = Arrays(self.visit, self.rules) if kind == "array" else Objects(self.visit, self.rules)
            return builder.rule(schema, path, hint)

    @contextmanager
    def _consuming(self) -> Iterator[None]:
        """Visits inside a "{" or "[": a $ref met again there is a recursion, not a loop."""
        saved, self._unconsumed = self._unconsumed, set()
        try:
            yield
        finally:
            self._unconsumed = saved

    def _ref(self, schema: dict[str, Any], path: Path, hint: str) -> str:
        ref = schema["$ref"]
        siblings = {key: value for key, value in schema.items() if key != "$ref" and constrains(key)}
        key = (ref, json.dumps(siblings, sort_keys=True))
        if key in self._unconsumed:
            reason = f"leads back to itself ('{ref}') before any '{{' or '[' (left recursion)"
            raise SchemaNotSupported("$ref", path, reason)
        if key in self._refs:
            return self._refs[key]
        target, target_path = self.refs.resolve(ref, path)
        name = self.rules.reserve(hint if siblings else ref.rsplit("/", 1)[-1].lstrip("#") or "document")
        self._refs[key] = name
        self._unconsumed.add(key)
        try:
            if siblings:
                body = self.visit(self.refs.merge([(target, target_path), (siblings, path)]), path, hint)
            else:
                body = self.visit(target, target_path, name)
        finally:
            self._unconsumed.discard(key)
        self.rules.define(name, body)
        return name

    def _union(self, schema: dict[str, Any], path: Path, hint: str) -> str:
        """anyOf / oneOf; the other keywords beside it apply to every alternative."""
        keyword = "oneOf" if "oneOf" in schema else "anyOf"
        rest = {key: value for key, value in schema.items() if key != keyword}
        options = [
            (option, (*path, keyword, str(index)))
            for index, option in enumerate(schema[keyword])
            if option is not False
        ]
        if not options:
            raise SchemaNotSupported(keyword, path, "has no alternative that any value satisfies")
        names, written = [], []
        for option, option_path in options:
            if any(constrains(key) for key in rest):
                option = self.refs.merge([(rest, path), (option, option_path)])
            names.append(self.visit(option, option_path, f"{hint}-{option_path[-1]}"))
            written.append(option)
        if keyword == "oneOf":  # after the visits, which refuse invalid alternatives
            OneOf(self.refs.resolve, self.budget).check(written, [option for option, _ in options], path)
        return self.rules.add(hint, " | ".join(dict.fromkeys(names)))


# Any JSON object (response_format json_object).
JSON_OBJECT_GRAMMAR = json_schema_grammar({"type": "object"})
