"""Output grammars (GBNF) for llama.cpp's grammar sampler: from a JSON schema (`schema`), built
from JSON's own pieces (`gbnf`) and, for `pattern`, from a regular expression (`pattern`)."""

from inference.runtime.grammar.schema import JSON_OBJECT_GRAMMAR, SchemaNotSupported, json_schema_grammar

__all__ = ["JSON_OBJECT_GRAMMAR", "SchemaNotSupported", "json_schema_grammar"]
