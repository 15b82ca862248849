"""Output grammars (GBNF) from JSON schemas. (Stand-in, replaced by our own converter.)"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from inference.errors import InvalidRequest


def json_schema_grammar(schema: dict[str, Any], param: str) -> str:
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidRequest(f"unsupported JSON schema construct in '{param}': {exc}", param=param) from None


JSON_OBJECT_GRAMMAR = JSON_GBNF
