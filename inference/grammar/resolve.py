"""`$ref` and `allOf`: where a local `$ref` points, and the one schema that asks what several
parts ask (an allOf, a `$ref` with keywords beside it), their allOf and `$ref`s inlined.

Parts merge keyword by keyword: the tighter bound, the types all parts allow, the enum values
all parts list, required names of any part, properties merged name by name; parts that set any
other keyword differently are refused, and so is an `additionalProperties` that would close an
object another part adds properties to. A `$ref` that includes itself through allOf is refused.
Each merge is charged to the grammar's budget; one Resolver per grammar, on its thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from inference.grammar.budget import VISIT_STEPS, Budget
from inference.grammar.keywords import Path, Schema, SchemaNotSupported, check_keywords, constrains, ref_problem
from inference.grammar.values import canonical

_Part = tuple[dict[str, Any], Path]  # a part of an allOf, without allOf and $ref, and where it is


class Resolver:
    """The `$ref`s and allOf parts of one schema (`root`), resolved and merged."""

    def __init__(self, root: Schema, budget: Budget, checked: dict[tuple[str, int], Any]) -> None:
        self.root = root
        self.budget = budget
        self._checked = checked  # shared with the converter: see check_keywords

    def resolve(self, ref: str, path: Path) -> tuple[Schema, Path]:
        """The schema a local `$ref` points to, and its path."""
        if not ref.startswith("#"):
            raise SchemaNotSupported("$ref", path, ref_problem(ref) or "")
        pointer = ref[1:]
        if pointer and not pointer.startswith("/"):
            raise SchemaNotSupported("$ref", path, f"must be a JSON pointer ('#/...'), not the anchor '{ref}'")
        target: Schema = self.root
        target_path: Path = ()
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

    def _flatten(self, part: Schema, path: Path, within: frozenset[str], inlined: set[str], out: list[_Part]) -> None:
        """Append `part` (less allOf and $ref) and, in turn, its allOf parts and $ref target.
        `within`: the $refs this part is inside of (meeting one again is a loop); `inlined`: the
        $refs this merge already holds, whose parts would only repeat what it asks."""
        if part is True:
            return
        if part is False:
            raise SchemaNotSupported("false", path, "is a schema no value satisfies")
        self.budget.spend(VISIT_STEPS + len(part))
        check_keywords(part, path, self._checked)
        own = {key: value for key, value in part.items() if constrains(key) and key not in ("allOf", "$ref")}
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


def _common_types(first: Any, second: Any) -> list[str]:
    first = [first] if isinstance(first, str) else first
    second = [second] if isinstance(second, str) else second
    common = [kind for kind in first if kind in second]
    common += ["integer" for a in first for b in second if {a, b} == {"integer", "number"} and "integer" not in common]
    return list(dict.fromkeys(common))


_TIGHTEST: dict[str, Callable[[Any, Any], Any]] = {
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
        allowed = {canonical(item) for item in value}
        merged[key] = [item for item in current if canonical(item) in allowed]
        if not merged[key]:
            raise SchemaNotSupported("enum", path, "has no value in common with the other parts of allOf")
    elif key in _TIGHTEST:
        merged[key] = _TIGHTEST[key](current, value)
    elif canonical(current) != canonical(value):
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
