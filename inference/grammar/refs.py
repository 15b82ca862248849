"""Moving a schema under another: its local `$ref`s rewritten to point where it now stands, so a
tool's parameters mean inside a larger schema (a call's `$defs`) what they meant alone."""

from __future__ import annotations

from typing import Any

# Keywords whose values are data, not schemas: a "$ref" inside them is not a reference.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "example"})


def refs_under(schema: Any, root: str) -> Any:
    """`schema` with its local `$ref`s ("#...") pointing into it as if it were at `root`
    (`#/$defs/x` → `root/$defs/x`)."""
    if isinstance(schema, list):
        return [refs_under(item, root) for item in schema]
    if not isinstance(schema, dict):
        return schema
    moved: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            moved[key] = root + value[1:]
        else:
            moved[key] = value if key in _DATA_KEYWORDS else refs_under(value, root)
    return moved
