"""The rules of one grammar as it is built: a fresh name for each new rule, one name per body
(a body met again reuses its rule), and the primitives every JSON grammar shares (whitespace,
any value, strings, numbers, the formats) under fixed names, defined when first used.

Each rule written is charged to the grammar's budget, so a grammar past its size is refused
while it is built. One Rules per grammar, used only by the thread building it.
"""

from __future__ import annotations

import re

from inference.grammar.budget import Budget
from inference.grammar.gbnf import ANY_CHAR, json_chars

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
        "object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "member": ('string space ":" space value', ("string", "space", "value")),
    "object": ('"{" space (member ("," space member)*)? space "}"', ("member", "space")),
    "array": ('"[" space (value ("," space value)*)? space "]"', ("value", "space")),
    "year": ('"000" [1-9] | "00" [1-9] [0-9] | "0" [1-9] [0-9]{2} | [1-9] [0-9]{3}', ()),
    "leap-year": (
        '[0-9]{2} ("0" [48] | [2468] [048] | [13579] [26]) | ("0" [48] | [2468] [048] | [13579] [26]) "00"',
        (),
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


class Rules:
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
