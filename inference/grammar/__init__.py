"""Output grammars (GBNF) for llama.cpp's grammar sampler: from a JSON schema (`schema`, with
`keywords`, `resolve`, `oneof`, `values`, `typed` and `rules`), built from JSON's own pieces
(`gbnf`) and, for `pattern`, from a regular expression (`pattern`), within a bound (`budget`),
off the event loop and cached (`compiler`)."""

from inference.grammar.budget import SchemaTooComplex
from inference.grammar.compiler import SchemaRefused, schema_grammar
from inference.grammar.keywords import SchemaNotSupported
from inference.grammar.refs import refs_under
from inference.grammar.schema import JSON_OBJECT_GRAMMAR, json_schema_grammar

__all__ = [
    "JSON_OBJECT_GRAMMAR",
    "SchemaNotSupported",
    "SchemaRefused",
    "SchemaTooComplex",
    "json_schema_grammar",
    "refs_under",
    "schema_grammar",
]
