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

Follows llama.cpp's json-schema-to-grammar (examples/json_schema_to_grammar.py; MIT licence,
(c) the ggml authors): the same rule shapes for primitives, members and items. Pure Python: no
llama_cpp, no Django.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from inference.grammar.budget import Budget
from inference.grammar.gbnf import (
    ANY_CHAR,
    MAX_INTEGER_DIGITS,
    SIGNIFICANT_DIGITS,
    Bound,
    GrammarTooLarge,
    json_chars,
    json_string_except,
    json_string_literal,
    literal_alternatives,
    number_range,
    repeat,
)
from inference.grammar.pattern import PatternNotSupported, pattern_gbnf

Path = tuple[str, ...]
Schema = Any  # a dict, or True / False
_Part = tuple[dict[str, Any], Path]  # a part of an allOf, without allOf and $ref, and where it is

TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")
FORMATS = ("date", "time", "date-time", "uuid")
ANNOTATIONS = frozenset({
    "title", "description", "$schema", "$comment", "examples", "example", "default", "deprecated",
    "readOnly", "writeOnly", "$anchor", "$vocabulary", "contentEncoding", "contentMediaType",
    "contentSchema", "discriminator", "externalDocs", "xml",
})
DEFINITIONS = frozenset({"$defs", "definitions"})
REFUSED = frozenset({
    "multipleOf", "not", "if", "then", "else", "patternProperties", "propertyNames", "contains",
    "minContains", "maxContains", "minProperties", "maxProperties", "dependentRequired",
    "dependentSchemas", "dependencies", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef",
    "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor",
})
# Keywords that constrain one type only: a schema without `type` that uses them gets that type.
FAMILIES = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"}),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
}
# Path segments a schema may be nested in (about two per level): deeper is refused, not a crash.
MAX_PATH = 64
# Budget steps, in units of about a microsecond here: visiting one (sub)schema, and asking
# whether two oneOf alternatives exclude each other (canonical JSON of constants: slower).
_VISIT_STEPS = 10
_EXCLUDES_STEPS = 40
_PATTERN_STEPS = 5  # per character of a pattern


class SchemaNotSupported(Exception):
    """A schema the grammar cannot enforce: the keyword, where it is, and why."""

    def __init__(self, keyword: str, path: Path, reason: str) -> None:
        self.keyword = keyword
        self.location = ".".join((*path, keyword))
        self.reason = reason
        super().__init__(f"'{keyword}'{f' at {self.location}' if path else ''} {reason}")


def json_schema_grammar(schema: dict[str, Any], budget: Budget | None = None) -> str:
    """GBNF (start rule `root`) for JSON text valid against `schema`; raises SchemaNotSupported
    for a keyword it cannot enforce and for an invalid schema, SchemaTooComplex past the
    budget's steps or grammar size (default: the server's bound)."""
    converter = _Converter(schema, budget or Budget())
    root = converter.visit(schema, (), "root")
    converter.rules.define("root", root)
    return converter.rules.text()


# Rules that more than one grammar (or part of one) uses, under fixed names: (body, needs).
_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    # Limited whitespace: a model cannot run away in it.
    "space": ('| " " | "\\n"{1,2} [ \\t]{0,20}', ()),
    "char": (json_chars(ANY_CHAR) or "", ()),
    "string": ('"\\"" char* "\\""', ("char",)),
    "boolean": ('"true" | "false"', ()),
    "null": ('"null"', ()),
    "integral": ('"0" | [1-9] [0-9]{0,15}', ()),
    "integer": ('"-"? integral', ("integral",)),
    "number": ('"-"? integral ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?', ("integral",)),
    "value": (
        "object | array | string | number | boolean | null", ("object", "array", "string", "number", "boolean", "null")
    ),
    "member": ('string space ":" space value', ("string", "space", "value")),
    "object": ('"{" space (member ("," space member)*)? space "}"', ("member", "space")),
    "array": ('"[" space (value ("," space value)*)? space "]"', ("value", "space")),
    "year": ('"000" [1-9] | "00" [1-9] [0-9] | "0" [1-9] [0-9]{2} | [1-9] [0-9]{3}', ()),
    "leap-year": (
        '[0-9]{2} ("0" [48] | [2468] [048] | [13579] [26]) | ("0" [48] | [2468] [048] | [13579] [26]) "00"', ()
    ),
    "date": (
        'year "-" ("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
        ' | year "-" ("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30")'
        ' | year "-02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]) | leap-year "-02-29"',
        ("year", "leap-year"),
    ),
    "time": (
        '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{3})?'
        ' ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
        (),
    ),
    "date-time": ('date "T" time', ("date", "time")),
    "uuid": ('[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}', ()),
}
_RULE_NAME = re.compile(r"[a-zA-Z0-9-]+")


class _Rules:
    """The rules of one grammar as it is built: fresh names, one name per body, primitives."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._bodies: dict[str, str] = {}  # name -> body, in the order defined
        self._names: dict[str, str] = {}  # body -> name
        self._taken = {"root", *_PRIMITIVES}

    def add(self, hint: str, body: str) -> str:
        """The name of a rule with this body: an existing one, or a new one named after `hint`."""
        if _RULE_NAME.fullmatch(body):
            return body
        if body not in self._names:
            self.define(self.reserve(hint), body)
        return self._names[body]

    def reserve(self, hint: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-")[:40] or "rule"
        name, number = base, 1
        while name in self._taken:
            number += 1
            name = f"{base}-{number}"
        self._taken.add(name)
        return name

    def define(self, name: str, body: str) -> None:
        self.budget.write(len(name) + len(body) + 6)  # " ::= " and the newline
        self._bodies[name] = body
        self._names.setdefault(body, name)

    def primitive(self, name: str) -> str:
        if name not in self._bodies:
            body, needs = _PRIMITIVES[name]
            self.define(name, body)
            for need in needs:
                self.primitive(need)
        return name

    def text(self) -> str:
        order = sorted(self._bodies, key=lambda name: name != "root")
        return "\n".join(f"{name} ::= {self._bodies[name]}" for name in order) + "\n"


class _Converter:
    """Turns one schema into rules, one visit per subschema; refuses what it cannot enforce."""

    def __init__(self, root: Schema, budget: Budget) -> None:
        self.root = root
        self.budget = budget
        self.rules = _Rules(budget)
        self._checked: dict[tuple[str, int], Any] = {}  # see _check_keywords
        self._refs: dict[tuple[str, str], str] = {}  # ($ref, its siblings) -> rule name
        # $refs being expanded since the last "{" or "[": meeting one again is a left recursion.
        self._unconsumed: set[tuple[str, str]] = set()

    def visit(self, schema: Schema, path: Path, hint: str) -> str:
        """The name of a rule for JSON values valid against `schema` (some or all of them)."""
        if schema is True:
            return self.rules.primitive("value")
        if schema is False:
            raise SchemaNotSupported("false", path, "is a schema no value satisfies")
        self.budget.spend(_VISIT_STEPS + len(schema))
        _check_keywords(schema, path, self._checked)
        if "$ref" in schema:
            return self._ref(schema, path, hint)
        if "allOf" in schema:
            return self.visit(self.merge([(schema, path)]), path, hint)
        if "anyOf" in schema or "oneOf" in schema:
            return self._union(schema, path, hint)
        types = _schema_types(schema)
        if "enum" in schema or "const" in schema:
            self.budget.spend(len(schema.get("enum", ())))
            return self.rules.add(hint, _constants(schema, path, types))
        return self.rules.add(hint, " | ".join(self._typed(schema, path, hint, kind) for kind in types))

    def _typed(self, schema: dict[str, Any], path: Path, hint: str, kind: str) -> str:
        if kind in ("null", "boolean"):
            return self.rules.primitive(kind)
        if kind in ("integer", "number"):
            return self._number(schema, path, hint, integer=kind == "integer")
        if kind == "string":
            return self._string(schema, path, hint)
        with self._consuming():
            builder = _Arrays(self) if kind == "array" else _Objects(self)
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
        siblings = {key: value for key, value in schema.items() if key != "$ref" and _constrains(key)}
        key = (ref, json.dumps(siblings, sort_keys=True))
        if key in self._unconsumed:
            reason = f"leads back to itself ('{ref}') before any '{{' or '[' (left recursion)"
            raise SchemaNotSupported("$ref", path, reason)
        if key in self._refs:
            return self._refs[key]
        target, target_path = self.resolve(ref, path)
        name = self.rules.reserve(hint if siblings else ref.rsplit("/", 1)[-1].lstrip("#") or "document")
        self._refs[key] = name
        self._unconsumed.add(key)
        try:
            if siblings:
                body = self.visit(self.merge([(target, target_path), (siblings, path)]), path, hint)
            else:
                body = self.visit(target, target_path, name)
        finally:
            self._unconsumed.discard(key)
        self.rules.define(name, body)
        return name

    def resolve(self, ref: str, path: Path) -> tuple[Schema, Path]:
        """The schema a local `$ref` points to, and its path."""
        if not ref.startswith("#"):
            raise SchemaNotSupported("$ref", path, _ref_problem(ref) or "")
        pointer = ref[1:]
        if pointer and not pointer.startswith("/"):
            raise SchemaNotSupported("$ref", path, f"must be a JSON pointer ('#/...'), not the anchor '{ref}'")
        target, target_path = self.root, ()
        for token in pointer.split("/")[1:] if pointer else ():
            token = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise SchemaNotSupported("$ref", path, f"points to nothing ('{ref}')")
            target_path = (*target_path, token)
        if not isinstance(target, (bool, dict)):
            raise SchemaNotSupported("$ref", path, f"does not point to a schema ('{ref}')")
        return target, target_path

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
            if any(_constrains(key) for key in rest):
                option = self.merge([(rest, path), (option, option_path)])
            names.append(self.visit(option, option_path, f"{hint}-{option_path[-1]}"))
            written.append(option)
        if keyword == "oneOf":  # after the visits, which refuse invalid alternatives
            _OneOf(self.resolve, self.budget).check(written, [option for option, _ in options], path)
        return self.rules.add(hint, " | ".join(dict.fromkeys(names)))

    def merge(self, parts: list[tuple[Schema, Path]]) -> dict[str, Any]:
        """One schema that asks what all the parts ask (allOf, a $ref with siblings), their allOf
        and $refs inlined; refuses parts that set one keyword differently."""
        flat: list[_Part] = []
        inlined: set[str] = set()
        for part, path in parts:
            self._flatten(part, path, frozenset(), inlined, flat)
        _check_closed_objects(flat)
        merged: dict[str, Any] = {}
        for part, path in flat:
            for key, value in part.items():
                self.budget.spend(1 + (len(value) if isinstance(value, (list, dict)) else 0))
                _combine(merged, key, value, path)
        return merged

    def _flatten(
        self, part: Schema, path: Path, within: frozenset[str], inlined: set[str], out: list[_Part]
    ) -> None:
        """Append `part` (less allOf and $ref) and, in turn, its allOf parts and $ref target.
        `within`: the $refs this part is inside of (meeting one again is a loop); `inlined`: the
        $refs this merge already holds, whose parts would only repeat what it asks."""
        if part is True:
            return
        if part is False:
            raise SchemaNotSupported("false", path, "is a schema no value satisfies")
        self.budget.spend(_VISIT_STEPS + len(part))
        _check_keywords(part, path, self._checked)
        own = {key: value for key, value in part.items() if _constrains(key) and key not in ("allOf", "$ref")}
        out.append((own, path))
        for index, sub in enumerate(part.get("allOf", ())):
            self._flatten(sub, (*path, "allOf", str(index)), within, inlined, out)
        if "$ref" in part:
            ref = part["$ref"]
            if ref in within:
                raise SchemaNotSupported("$ref", path, f"includes itself through allOf ('{ref}')")
            if ref in inlined:
                return
            inlined.add(ref)
            target, target_path = self.resolve(ref, path)
            self._flatten(target, target_path, within | {ref}, inlined, out)

    def _number(self, schema: dict[str, Any], path: Path, hint: str, *, integer: bool) -> str:
        lower = _bound(schema, "minimum", "exclusiveMinimum", lower=True)
        upper = _bound(schema, "maximum", "exclusiveMaximum", lower=False)
        if lower is None and upper is None:
            return self.rules.primitive("integer" if integer else "number")
        if lower and upper and (
            lower[0].value > upper[0].value
            or (lower[0].value == upper[0].value and not (lower[0].inclusive and upper[0].inclusive))
        ):
            raise SchemaNotSupported(upper[1], path, f"is below '{lower[1]}': no number is in the range")
        body = number_range(lower and lower[0], upper and upper[0], integer=integer)
        if body is None:
            keyword = lower[1] if lower else upper[1]  # type: ignore[index]
            what = (
                f"integer of at most {MAX_INTEGER_DIGITS} digits" if integer
                else f"number of at most {SIGNIFICANT_DIGITS} significant digits"
            )
            raise SchemaNotSupported(keyword, path, f"leaves no {what} in the range")
        return self.rules.add(hint, body)

    def _string(self, schema: dict[str, Any], path: Path, hint: str) -> str:
        kinds = [key for key in ("format", "pattern", "minLength", "maxLength") if key in schema]
        if len(kinds) > 1 and kinds[:2] != ["minLength", "maxLength"]:
            raise SchemaNotSupported(kinds[1], path, f"together with '{kinds[0]}' is not supported")
        quote = '"\\""'
        if "format" in schema:
            kind = schema["format"]
            return self.rules.add(f"{kind}-string", f"{quote} {self.rules.primitive(kind)} {quote}")
        char = self.rules.primitive("char")
        if "pattern" in schema:
            self.budget.spend(_PATTERN_STEPS * len(schema["pattern"]))
            try:
                content = pattern_gbnf(
                    schema["pattern"], char_rule=char, define=lambda body: self.rules.add(f"{hint}-pattern", body)
                )
            except (PatternNotSupported, GrammarTooLarge, RecursionError) as problem:
                raise SchemaNotSupported("pattern", path, f"cannot be enforced: {problem}") from None
        else:
            low, high = _count(schema, "minLength") or 0, _count(schema, "maxLength")
            if high is not None and low > high:
                raise SchemaNotSupported("maxLength", path, f"is below 'minLength' ({high} < {low})")
            if low == 0 and high is None:
                return self.rules.primitive("string")
            content = _repeat(char, low, high, "maxLength", path)
        return self.rules.add(hint, " ".join(part for part in (quote, content, quote) if part))


class _OneOf:
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
            self.budget.spend(_EXCLUDES_STEPS + len(keys))
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
        self.budget.spend(_EXCLUDES_STEPS)
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
            name in first_properties and name in second_properties
            and self._excludes(first_properties[name], second_properties[name], depth + 1)
            for name in required & set(second.get("required", ()))
        )

    def _plain(self, schema: Schema) -> Schema:
        """The schema a bare `{"$ref": ...}` points to (annotations beside it aside)."""
        for _ in range(MAX_PATH):
            if not (isinstance(schema, dict) and "$ref" in schema) or any(
                _constrains(key) for key in schema if key != "$ref"
            ):
                break
            schema = self.resolve(schema["$ref"], ())[0]
        return schema


class _Objects:
    """The rule of an object schema: its members in order, a comma before all but the first."""

    def __init__(self, converter: _Converter) -> None:
        self.converter, self.rules = converter, converter.rules

    def rule(self, schema: dict[str, Any], path: Path, hint: str) -> str:
        properties = dict(schema.get("properties", {}))
        required = schema.get("required", [])
        additional = schema.get("additionalProperties")
        if not properties and not required and additional in (None, True):
            return self.rules.primitive("object")
        for name in required:
            if properties.get(name, True) is False or (name not in properties and additional is False):
                raise SchemaNotSupported("required", path, f"lists '{name}', which the schema forbids")
            properties.setdefault(name, additional if isinstance(additional, dict) else True)
        members = [
            (self._member(name, sub, path), "required" if name in required else "optional")
            for name, sub in properties.items() if sub is not False
        ]
        if additional not in (None, False):
            members.append((self._additional(additional, list(properties), path, hint), "repeated"))
        self.rules.primitive("space")
        inner = self._members(members, hint)
        return self.rules.add(hint, f'"{{" space {inner} space "}}"' if inner else '"{" space "}"')

    def _member(self, name: str, schema: Schema, path: Path) -> str:
        value = self.converter.visit(schema, (*path, "properties", name), name)
        return self.rules.add(f"{name}-kv", f'{json_string_literal(name)} space ":" space {value}')

    def _additional(self, schema: Schema, declared: list[str], path: Path, hint: str) -> str:
        value = self.converter.visit(schema, (*path, "additionalProperties"), f"{hint}-additional-value")
        char = self.rules.primitive("char")
        try:
            key = json_string_except(declared, char) if declared else self.rules.primitive("string")
        except GrammarTooLarge as problem:
            raise SchemaNotSupported("additionalProperties", path, f"cannot be enforced: {problem}") from None
        key = self.rules.add(f"{hint}-additional-key", key)
        return self.rules.add(f"{hint}-additional-kv", f'{key} space ":" space {value}')

    def _members(self, members: list[tuple[str, str]], hint: str) -> str:
        """Members in order: required ones always, optional ones or not, repeated ones any
        number of times; the first one written has no comma before it."""
        units = {"required": '"," space {}', "optional": '("," space {})?', "repeated": '("," space {})*'}
        starts = []  # the members that may come first: leading optional ones and the first required
        for index, (_, kind) in enumerate(members):
            starts.append(index)
            if kind == "required":
                break
        tails = [""] * len(members)  # tails[i]: what may follow member i; shared rules if several starts
        tail = ""
        for index in reversed(range(len(members))):
            tails[index] = tail
            body = " ".join(part for part in (units[members[index][1]].format(members[index][0]), tail) if part)
            tail = self.rules.add(f"{hint}-rest", body) if len(starts) > 1 else body
        firsts = []
        for index in starts:
            name, kind = members[index]
            again = units["repeated"].format(name) if kind == "repeated" else ""
            firsts.append(" ".join(part for part in (name, again, tails[index]) if part))
        inner = " | ".join(firsts)
        if starts and members[starts[-1]][1] != "required":
            return f"({inner})?"
        return f"({inner})" if len(firsts) > 1 else inner


class _Arrays:
    """The rule of an array schema: listed items (prefixItems), then more of one schema."""

    def __init__(self, converter: _Converter) -> None:
        self.converter, self.rules = converter, converter.rules

    def rule(self, schema: dict[str, Any], path: Path, hint: str) -> str:
        listed_keyword = "items" if isinstance(schema.get("items"), list) else "prefixItems"
        if listed_keyword == "items" and "prefixItems" in schema:
            raise SchemaNotSupported("items", path, "is a list beside 'prefixItems'")
        listed = schema.get(listed_keyword) or []
        rest_keyword = "additionalItems" if listed_keyword == "items" else "items"
        rest = schema.get(rest_keyword)
        low, high = _count(schema, "minItems") or 0, _count(schema, "maxItems")
        if high is not None and low > high:
            raise SchemaNotSupported("maxItems", path, f"is below 'minItems' ({high} < {low})")
        if not listed and rest is None:
            if low == 0 and high is None:
                return self.rules.primitive("array")
            rest = True
        elif rest is None:  # a tuple whose further items the schema leaves open ends after its items
            high = max(len(listed), low) if high is None else high
            rest = True
        if rest is False:
            if low > len(listed):
                raise SchemaNotSupported("minItems", path, f"asks for more than the {len(listed)} items allowed")
            high = len(listed) if high is None else min(high, len(listed))
        listed = listed[:high] if high is not None else listed
        items = [
            self.converter.visit(sub, (*path, listed_keyword, str(index)), f"{hint}-{index}")
            for index, sub in enumerate(listed)
        ]
        more = None
        if rest is not False and (high is None or high > len(listed)):
            item = self.converter.visit(rest, (*path, rest_keyword), f"{hint}-item")
            more = self.rules.add(f"{hint}-next", f'"," space {item}'), item
        self.rules.primitive("space")
        inner = self._items(items, more, low, high, path)
        return self.rules.add(hint, f'"[" space {inner} space "]"' if inner else '"[" space "]"')

    def _items(self, items: list[str], more: tuple[str, str] | None, low: int, high: int | None, path: Path) -> str:
        """The listed items (optional beyond `low`), then `more` (comma and item) to the counts."""
        def further(already: int) -> str:  # `more` after `already` items
            return _repeat(more[0], max(low - already, 0), None if high is None else high - already, "maxItems", path)

        if not items:
            if more is None or high == 0:
                return ""
            tail = " ".join(part for part in (more[1], further(1)) if part)
            return tail if low else f"({tail})?"
        tail = further(len(items)) if more is not None else ""
        for index in reversed(range(len(items))):
            part = " ".join(piece for piece in ('"," space' if index else "", items[index], tail) if piece)
            tail = part if index < low else f"({part})?"
        return tail


def _repeat(item: str, low: int, high: int | None, keyword: str, path: Path) -> str:
    try:
        return repeat(item, low, high)
    except GrammarTooLarge as problem:
        raise SchemaNotSupported(keyword, path, f"cannot be enforced: {problem}") from None


# Schemas without a converter: types, constants, bounds, merging.


def _schema_types(schema: dict[str, Any]) -> list[str]:
    """The types the grammar writes for a schema (without anyOf/oneOf/allOf/$ref): its `type`,
    else those whose keywords it uses, else all; "integer" is left out beside "number"."""
    declared = schema.get("type")
    if declared is None:
        types = [kind for kind, keywords in FAMILIES.items() if keywords & schema.keys()] or list(TYPES)
    else:
        types = [declared] if isinstance(declared, str) else list(declared)
    return [kind for kind in types if not (kind == "integer" and "number" in types)]


def _written_types(schema: dict[str, Any]) -> list[str]:
    if "enum" in schema or "const" in schema:
        return sorted({_json_type(value) for value in _constant_values(schema)})
    return _schema_types(schema)


def _valid_types(schema: dict[str, Any]) -> list[str]:
    """The types of the values a validator accepts (a superset)."""
    if "enum" in schema or "const" in schema:
        return _written_types(schema)
    declared = schema.get("type", list(TYPES))
    return [declared] if isinstance(declared, str) else list(declared)


def _types_overlap(first: list[str], second: list[str]) -> bool:
    numbers = {"integer", "number"}
    return any(a == b or {a, b} == numbers for a in first for b in second)


def _fits(value: Any, types: list[str]) -> bool:
    kind = _json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def _constant_values(schema: dict[str, Any]) -> list[Any]:
    values = schema["enum"] if "enum" in schema else [schema["const"]]
    if "enum" in schema and "const" in schema:
        values = [value for value in values if _canonical(value) == _canonical(schema["const"])]
    return values


def _constant_keys(schema: dict[str, Any]) -> set[str] | None:
    if "enum" not in schema and "const" not in schema:
        return None
    return {_canonical(value) for value in _constant_values(schema)}


def _constants(schema: dict[str, Any], path: Path, types: list[str]) -> str:
    """Alternatives for the enum/const values of the schema's types."""
    keyword = "const" if "const" in schema else "enum"
    beside = [key for key in schema if _constrains(key) and key not in ("type", "enum", "const")]
    if beside:
        raise SchemaNotSupported(beside[0], path, f"beside '{keyword}' is not supported")
    values: dict[str, Any] = {}
    for value in _constant_values(schema):
        if _fits(value, types):
            values.setdefault(_canonical(value), value)
    if not values:
        raise SchemaNotSupported(keyword, path, "has no value of the schema's type")
    return literal_alternatives([_json_text(value) for value in values.values()])


def _json_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):  # a lone surrogate: not UTF-8
        text = json.dumps(value)
    return text


def _canonical(value: Any) -> str:
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


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, *, lower: bool) -> tuple[Bound, str] | None:
    """The tighter of a schema's inclusive and exclusive bound on one side, and its keyword."""
    candidates = [
        (Bound(_decimal(schema[keyword]), keyword == inclusive), keyword)
        for keyword in (inclusive, exclusive) if keyword in schema
    ]
    if not candidates:
        return None
    # Lower bounds: the larger value is tighter; upper: the smaller. At a tie, the exclusive one.
    return max(candidates, key=lambda item: ((item[0].value if lower else -item[0].value), not item[0].inclusive))


def _decimal(number: int | float) -> Decimal:
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))


def _count(schema: dict[str, Any], keyword: str) -> int | None:
    return int(schema[keyword]) if keyword in schema else None


def _common_types(first: Any, second: Any) -> list[str]:
    first = [first] if isinstance(first, str) else first
    second = [second] if isinstance(second, str) else second
    common = [kind for kind in first if kind in second]
    common += ["integer" for a in first for b in second if {a, b} == {"integer", "number"} and "integer" not in common]
    return list(dict.fromkeys(common))


_TIGHTEST = {
    **dict.fromkeys(("minimum", "exclusiveMinimum", "minLength", "minItems"), max),
    **dict.fromkeys(("maximum", "exclusiveMaximum", "maxLength", "maxItems"), min),
}


def _combine(merged: dict[str, Any], key: str, value: Any, path: Path) -> None:
    """Add one keyword of an allOf part to the merged schema."""
    if key == "const":
        key, value = "enum", [value]
    if key not in merged:
        merged[key] = value
        return
    current = merged[key]
    if key == "type":
        merged[key] = _common_types(current, value)
        if not merged[key]:
            raise SchemaNotSupported("type", path, "leaves no type that every part of allOf allows")
    elif key == "properties":
        both = {name: {"allOf": [current[name], sub]} for name, sub in value.items() if name in current}
        merged[key] = {**current, **value, **both}
    elif key == "required":
        merged[key] = list(dict.fromkeys([*current, *value]))
    elif key == "enum":
        allowed = {_canonical(item) for item in value}
        merged[key] = [item for item in current if _canonical(item) in allowed]
        if not merged[key]:
            raise SchemaNotSupported("enum", path, "has no value in common with the other parts of allOf")
    elif key in _TIGHTEST:
        merged[key] = _TIGHTEST[key](current, value)
    elif _canonical(current) != _canonical(value):
        raise SchemaNotSupported(key, path, "is set differently by two parts of allOf (or a $ref and its siblings)")


def _check_closed_objects(parts: list[_Part]) -> None:
    """additionalProperties speaks of its own part's properties: merged, it must still mean that."""
    for part, path in parts:
        if "additionalProperties" not in part:
            continue
        own = set(part.get("properties", {}))
        for other, _ in parts:
            if other is not part and not set(other.get("properties", {})) <= own:
                raise SchemaNotSupported(
                    "additionalProperties", path, "is not supported where another part of allOf adds properties"
                )


# Keywords: which are known, and what their values must be.


def _constrains(key: str) -> bool:
    return key not in ANNOTATIONS and key not in DEFINITIONS and key != "$id" and not key.startswith("x-")


def _check_keywords(schema: dict[str, Any], path: Path, checked: dict[tuple[str, int], Any]) -> None:
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
        if not _constrains(key):
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


def _ref_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    return None if value.startswith("#") else f"must be local ('#' or '#/...'), not '{value}'"


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "type": _type_problem,
    "enum": lambda value: _problem(isinstance(value, list) and bool(value) and _is_json(value), "a non-empty list"),
    "const": lambda value: _problem(_is_json(value), "a JSON value"),
    **dict.fromkeys(
        ("anyOf", "oneOf", "allOf"),
        lambda value: _problem(_schemas(value) and bool(value), "a non-empty list of schemas"),
    ),
    "$ref": _ref_problem,
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
    **dict.fromkeys(("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"), lambda value: _problem(
        isinstance(value, (int, float)) and not isinstance(value, bool) and _is_json(value), "a number"
    )),
    "pattern": lambda value: _problem(isinstance(value, str), "a string"),
    "format": _format_problem,
}


# Any JSON object (response_format json_object).
JSON_OBJECT_GRAMMAR = json_schema_grammar({"type": "object"})
