"""The rule for one type's own keywords, once the converter knows which type it writes: numbers
in a range, strings of a length, pattern or format, objects (their members in the schema's
order) and arrays (listed items, then more of one schema, within the counts).

A subschema (a member's value, an item) goes back to the converter through `visit`; whatever a
type's keywords ask that a grammar of a sane size cannot enforce is refused with the keyword.
Used only by the thread building the grammar.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from inference.grammar.budget import PATTERN_STEPS
from inference.grammar.gbnf import (
    MAX_INTEGER_DIGITS,
    SIGNIFICANT_DIGITS,
    Bound,
    GrammarTooLarge,
    json_string_except,
    json_string_literal,
    number_range,
    repeat,
)
from inference.grammar.keywords import Path, Schema, SchemaNotSupported
from inference.grammar.pattern import PatternNotSupported, pattern_gbnf
from inference.grammar.rules import Rules

# The converter's visit: the name of a rule for a subschema, at its path, named after a hint.
Visit = Callable[[Schema, Path, str], str]


def number_rule(rules: Rules, schema: dict[str, Any], path: Path, hint: str, *, integer: bool) -> str:
    lower = _bound(schema, "minimum", "exclusiveMinimum", lower=True)
    upper = _bound(schema, "maximum", "exclusiveMaximum", lower=False)
    if lower is None and upper is None:
        return rules.primitive("integer" if integer else "number")
    if (
        lower
        and upper
        and (
            lower[0].value > upper[0].value
            or (lower[0].value == upper[0].value and not (lower[0].inclusive and upper[0].inclusive))
        )
    ):
        raise SchemaNotSupported(upper[1], path, f"is below '{lower[1]}': no number is in the range")
    body = number_range(lower and lower[0], upper and upper[0], integer=integer)
    if body is None:
        keyword = next(side[1] for side in (lower, upper) if side)
        what = (
            f"integer of at most {MAX_INTEGER_DIGITS} digits"
            if integer
            else f"number of at most {SIGNIFICANT_DIGITS} significant digits"
        )
        raise SchemaNotSupported(keyword, path, f"leaves no {what} in the range")
    return rules.add(hint, body)


def string_rule(rules: Rules, schema: dict[str, Any], path: Path, hint: str) -> str:
    kinds = [key for key in ("format", "pattern", "minLength", "maxLength") if key in schema]
    if len(kinds) > 1 and kinds[:2] != ["minLength", "maxLength"]:
        raise SchemaNotSupported(kinds[1], path, f"together with '{kinds[0]}' is not supported")
    quote = '"\\""'
    if "format" in schema:
        kind = schema["format"]
        return rules.add(f"{kind}-string", f"{quote} {rules.primitive(kind)} {quote}")
    char = rules.primitive("char")
    if "pattern" in schema:
        rules.budget.spend(PATTERN_STEPS * len(schema["pattern"]))
        try:
            content = pattern_gbnf(
                schema["pattern"], char_rule=char, define=lambda body: rules.add(f"{hint}-pattern", body)
            )
        except (PatternNotSupported, GrammarTooLarge, RecursionError) as problem:
            raise SchemaNotSupported("pattern", path, f"cannot be enforced: {problem}") from None
    else:
        low, high = _count(schema, "minLength") or 0, _count(schema, "maxLength")
        if high is not None and low > high:
            raise SchemaNotSupported("maxLength", path, f"is below 'minLength' ({high} < {low})")
        if low == 0 and high is None:
            return rules.primitive("string")
        content = _repeat(char, low, high, "maxLength", path)
    return rules.add(hint, " ".join(part for part in (quote, content, quote) if part))


class Objects:
    """The rule of an object schema: its members in order, a comma before all but the first."""

    def __init__(self, visit: Visit, rules: Rules) -> None:
        self.visit, self.rules = visit, rules

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
            for name, sub in properties.items()
            if sub is not False
        ]
        if additional not in (None, False):
            members.append((self._additional(additional, list(properties), path, hint), "repeated"))
        self.rules.primitive("space")
        inner = self._members(members, hint)
        return self.rules.add(hint, f'"{{" space {inner} space "}}"' if inner else '"{" space "}"')

    def _member(self, name: str, schema: Schema, path: Path) -> str:
        value = self.visit(schema, (*path, "properties", name), name)
        return self.rules.add(f"{name}-kv", f'{json_string_literal(name)} space ":" space {value}')

    def _additional(self, schema: Schema, declared: list[str], path: Path, hint: str) -> str:
        value = self.visit(schema, (*path, "additionalProperties"), f"{hint}-additional-value")
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


class Arrays:
    """The rule of an array schema: listed items (prefixItems), then more of one schema."""

    def __init__(self, visit: Visit, rules: Rules) -> None:
        self.visit, self.rules = visit, rules

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
            self.visit(sub, (*path, listed_keyword, str(index)), f"{hint}-{index}") for index, sub in enumerate(listed)
        ]
        more = None
        if rest is not False and (high is None or high > len(listed)):
            item = self.visit(rest, (*path, rest_keyword), f"{hint}-item")
            more = self.rules.add(f"{hint}-next", f'"," space {item}'), item
        self.rules.primitive("space")
        inner = self._items(items, more, low, high, path)
        return self.rules.add(hint, f'"[" space {inner} space "]"' if inner else '"[" space "]"')

    def _items(self, items: list[str], more: tuple[str, str] | None, low: int, high: int | None, path: Path) -> str:
        """The listed items (optional beyond `low`), then `more` (comma and item) to the counts."""

        def further(next_item: str, already: int) -> str:  # `more` after `already` items
            return _repeat(next_item, max(low - already, 0), None if high is None else high - already, "maxItems", path)

        if not items:
            if more is None or high == 0:
                return ""
            tail = " ".join(part for part in (more[1], further(more[0], 1)) if part)
            return tail if low else f"({tail})?"
        tail = further(more[0], len(items)) if more is not None else ""
        for index in reversed(range(len(items))):
            part = " ".join(piece for piece in ('"," space' if index else "", items[index], tail) if piece)
            tail = part if index < low else f"({part})?"
        return tail


def _repeat(item: str, low: int, high: int | None, keyword: str, path: Path) -> str:
    try:
        return repeat(item, low, high)
    except GrammarTooLarge as problem:
        raise SchemaNotSupported(keyword, path, f"cannot be enforced: {problem}") from None


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, *, lower: bool) -> tuple[Bound, str] | None:
    """The tighter of a schema's inclusive and exclusive bound on one side, and its keyword."""
    candidates = [
        (Bound(_decimal(schema[keyword]), keyword == inclusive), keyword)
        for keyword in (inclusive, exclusive)
        if keyword in schema
    ]
    if not candidates:
        return None
    # Lower bounds: the larger value is tighter; upper: the smaller. At a tie, the exclusive one.
    return max(candidates, key=lambda item: ((item[0].value if lower else -item[0].value), not item[0].inclusive))


def _decimal(number: int | float) -> Decimal:
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))


def _count(schema: dict[str, Any], keyword: str) -> int | None:
    return int(schema[keyword]) if keyword in schema else None
