"""Structured output: a JSON schema becomes a grammar that enforces each keyword, or the request
is refused naming the keyword. What a grammar accepts is asked of llama.cpp itself (its grammar
sampler over SmolLM2's vocabulary, loaded without weights); jsonschema is the judge of what is
valid. Random walks through the grammars and real generation through the API then check that
whatever gets written validates, for hypothesis-generated schemas."""

from __future__ import annotations

import ctypes
import datetime
import json
import math
import random
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp
import numpy as np
import pytest
from django.test import AsyncClient
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from inference.grammar import JSON_OBJECT_GRAMMAR, SchemaNotSupported, json_schema_grammar
from tests.conftest import SMOLLM2, DaphneServer, validate_openai

Schema = dict[str, Any]


class GrammarMatcher:
    """llama.cpp's grammar sampler over one model's vocabulary: whether a grammar accepts a
    text (each of its tokens allowed in turn, then the end of the sequence), and random texts
    it allows."""

    def __init__(self, model: Path) -> None:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
        assert self._model
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._eos = llama_cpp.llama_vocab_eos(self._vocab)
        count = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._end = np.array([llama_cpp.llama_vocab_is_eog(self._vocab, token) for token in range(count)])
        self._candidates = np.zeros(count, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        self._candidates["id"] = np.arange(count)

    def close(self) -> None:
        llama_cpp.llama_model_free(self._model)

    def accepts(self, grammar: str, text: str) -> bool:
        sampler = self._sampler(grammar)
        try:
            for token in self._tokenize(text):
                if not self._allowed(sampler, [token])[0]:
                    return False
                llama_cpp.llama_sampler_accept(sampler, token)
            return bool(self._allowed(sampler, [self._eos])[0])
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def walk(self, grammar: str, rng: random.Random, limit: int) -> str | None:
        """A text the grammar allows, token by token uniformly among the allowed ones, ending
        (when it may) with probability 1/4; None if it does not end within `limit` tokens."""
        sampler = self._sampler(grammar)
        pieces = []
        try:
            for _ in range(limit):
                allowed = self._allowed(sampler, None)
                ends = allowed & self._end
                if ends.any() and (rng.random() < 0.25 or ends.sum() == allowed.sum()):
                    return b"".join(pieces).decode()
                tokens = np.flatnonzero(allowed & ~self._end)
                assert tokens.size, "a dead end: no token may follow " + repr(b"".join(pieces))
                token = int(rng.choice(tokens))
                llama_cpp.llama_sampler_accept(sampler, token)
                pieces.append(self._piece(token))
            return None
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def _sampler(self, grammar: str) -> Any:
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        assert sampler, f"llama.cpp cannot compile the grammar:\n{grammar}"
        return sampler

    def _allowed(self, sampler: Any, tokens: list[int] | None) -> np.ndarray:
        """Which of the tokens (None: all) the grammar lets come next."""
        candidates = self._candidates if tokens is None else self._candidates[tokens]
        candidates["logit"] = 0.0
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(llama_cpp.llama_token_data_p), len(candidates), -1, False
        )
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return candidates["logit"] != -math.inf

    def _tokenize(self, text: str) -> list[int]:
        data = text.encode()
        tokens = (llama_cpp.llama_token * (len(data) + 8))()
        count = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, len(data) + 8, False, False)
        return list(tokens[:count])

    def _piece(self, token: int) -> bytes:
        buffer = (ctypes.c_char * 64)()
        length = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
        return buffer.raw[:length]


@pytest.fixture(scope="session")
def matcher(smollm2_file: Path) -> Iterator[GrammarMatcher]:
    grammar_matcher = GrammarMatcher(smollm2_file)
    yield grammar_matcher
    grammar_matcher.close()


# jsonschema checks "time" and "date-time" only with an optional package: check them here.
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _rfc3339_date_time(text: object) -> bool:
    if not isinstance(text, str):
        return True
    return re.fullmatch(r".+T.+(Z|[+-]\d\d:\d\d)", text) is not None and bool(datetime.datetime.fromisoformat(text))


@FORMATS.checks("time", raises=ValueError)
def _rfc3339_time(text: object) -> bool:
    if not isinstance(text, str):
        return True
    return re.fullmatch(r".+(Z|[+-]\d\d:\d\d)", text) is not None and bool(datetime.time.fromisoformat(text))


def validator(schema: Schema) -> jsonschema.Validator:
    """The validator of the schema's draft (its `$schema`, else 2020-12), formats checked."""
    draft = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return draft(schema, format_checker=FORMATS)


def accepted(matcher: GrammarMatcher, schema: Schema, texts: list[str]) -> list[str]:
    """The texts the schema's grammar accepts, each checked to be valid JSON for the schema."""
    grammar = json_schema_grammar(schema)
    taken = [text for text in texts if matcher.accepts(grammar, text)]
    for text in taken:
        assert validator(schema).is_valid(json.loads(text)), (schema, text)
    return taken


def assert_exactly_the_valid(matcher: GrammarMatcher, schema: Schema, texts: list[str]) -> None:
    expected = [text for text in texts if validator(schema).is_valid(json.loads(text))]
    assert accepted(matcher, schema, texts) == expected, schema


def as_json(*values: Any) -> list[str]:
    return [json.dumps(value, ensure_ascii=False) for value in values]


# Ranges.

INTEGER_BOUNDS = [
    {"minimum": 7},
    {"maximum": 7},
    {"minimum": 0},
    {"maximum": 0},
    {"minimum": -13, "maximum": 42},
    {"minimum": -120, "maximum": -7},
    {"exclusiveMinimum": 7},
    {"exclusiveMaximum": -7},
    {"exclusiveMinimum": -3, "exclusiveMaximum": 100},
    {"minimum": 99, "maximum": 1001},
    {"minimum": 5, "maximum": 5},
    {"minimum": 2.5, "maximum": 97.5},
    {"exclusiveMinimum": -2.5},
    {"exclusiveMaximum": 1e3},
    {"minimum": 5, "exclusiveMinimum": 5},
    {"maximum": 10, "exclusiveMaximum": 11},
    {"minimum": 123456789012, "maximum": 123456790000},
]


def _near(*bounds: float) -> set[int]:
    """Integers around the bounds, and at each power of ten of up to 15 digits (where a range
    has no bound, its grammar stops)."""
    near = {sign * (10**power + offset) for sign in (1, -1) for power in range(15) for offset in (-1, 0, 1)}
    for bound in bounds:
        near |= set(range(math.floor(bound) - 25, math.ceil(bound) + 26))
    return near


@pytest.mark.parametrize("bounds", INTEGER_BOUNDS, ids=json.dumps)
def test_integer_ranges_accept_exactly_the_integers_in_them(matcher: GrammarMatcher, bounds: dict[str, float]) -> None:
    texts = [str(value) for value in sorted(_near(0, *bounds.values()))]
    assert_exactly_the_valid(matcher, {"type": "integer", **bounds}, texts)


@st.composite
def number_ranges(draw: st.DrawFn) -> tuple[Schema, list[str]]:
    """A number schema with up to two bounds (two fraction digits at most), and numbers near
    and between them, written as JSON writes them."""
    low = draw(st.integers(-99999, 99999))
    bounds = {"minimum": Decimal(low) / 100, "maximum": Decimal(low + draw(st.integers(1, 99999))) / 100}
    schema: Schema = {"type": "number"}
    for side, bound in bounds.items():
        if draw(st.booleans()):
            keyword = draw(st.sampled_from([side, f"exclusive{side.capitalize()}"]))
            schema[keyword] = int(bound) if bound == int(bound) else float(bound)
    anchors = [Decimal(repr(value)) for key, value in schema.items() if key != "type"] + [Decimal(0)]
    steps = [Decimal(10) ** -power for power in range(6)]
    values = {anchor + sign * step for anchor in anchors for step in steps for sign in (-1, 0, 1)}
    values |= set(draw(st.lists(st.decimals(-(10**6), 10**6, places=draw(st.integers(0, 5))), max_size=10)))
    # JSON allows "-0", the grammar never writes it: not a text to compare on.
    return schema, [format(value, "f") for value in sorted(values) if not (value.is_zero() and value.is_signed())]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(number_ranges())
@example(({"type": "number", "minimum": 1.25, "exclusiveMaximum": 2.5}, ["1.2", "1.25", "1.2500", "2.49999", "2.5"]))
@example(({"type": "number", "exclusiveMinimum": -0.5, "maximum": 0}, ["-0.5", "-0.49", "-0.00001", "0", "0.0"]))
@example(({"type": "number", "exclusiveMinimum": 0.1, "exclusiveMaximum": 0.3}, ["0.1", "0.10001", "0.29999", "0.3"]))
@pytest.mark.slow
def test_number_ranges_accept_exactly_the_numbers_in_them(
    matcher: GrammarMatcher, case: tuple[Schema, list[str]]
) -> None:
    assert_exactly_the_valid(matcher, *case)


def test_ranges_beyond_what_can_be_written_are_refused() -> None:
    with pytest.raises(SchemaNotSupported, match="exclusiveMinimum"):
        json_schema_grammar({"type": "integer", "exclusiveMinimum": 2, "exclusiveMaximum": 3})
    with pytest.raises(SchemaNotSupported, match="minimum"):
        json_schema_grammar({"type": "number", "minimum": 1e20})


# Strings, constants, patterns, formats.


def test_string_lengths_count_characters(matcher: GrammarMatcher) -> None:
    texts = as_json("", "a", "ab", "abcd", "abcde", "é", "éé", "ééé€", "😀😀", "a\nb", '"\\', "\x01\x7f", "a\tb\u2028")
    assert_exactly_the_valid(matcher, {"type": "string", "minLength": 2, "maxLength": 4}, texts)
    # One spelling per character: no \u escapes of printable ones, no surrogate pairs, no "\/".
    assert accepted(matcher, {"type": "string", "maxLength": 2}, ['"\\u00e9"', '"\\/"', '"\\ud83d\\ude00"']) == []


@pytest.mark.parametrize("bounds", [{"maxLength": 2500}, {"minLength": 2100}, {"minLength": 1001, "maxLength": 1001}])
def test_long_strings_keep_their_bounds(matcher: GrammarMatcher, bounds: dict[str, int]) -> None:
    lengths = [0, 999, 1000, 1001, 1002, 2000, 2099, 2100, 2101, 2499, 2500, 2501, 3000]
    assert_exactly_the_valid(matcher, {"type": "string", **bounds}, as_json(*("a" * length for length in lengths)))


def test_enum_and_const_allow_their_values_only(matcher: GrammarMatcher) -> None:
    values = ["a", 'quote"d', 1, 2.5, True, None, [1, "x"], {"k": [None]}, "é\n"]
    assert_exactly_the_valid(matcher, {"enum": values}, as_json(*values, "b", 3, False, [1], {}))
    assert accepted(matcher, {"type": "string", "enum": ["a", 1, "b"]}, ['"a"', "1", '"b"']) == ['"a"', '"b"']
    assert accepted(matcher, {"type": "integer", "enum": [1, 1.0, 2.5]}, ["1", "1.0", "2.5"]) == ["1"]
    assert accepted(matcher, {"const": {"a": [1, 2]}}, ['{"a": [1, 2]}', '{"a": [2, 1]}']) == ['{"a": [1, 2]}']


# Values that begin alike (the enum's tree shares their beginnings) and numbers that begin others.
ALIKE = st.one_of(
    st.text('ab"é', max_size=6).map(lambda tail: f"value {tail}"),
    st.integers(0, 2000),
    st.sampled_from([True, False, None, 1.5, 15, 150]),
)


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(ALIKE, min_size=1, max_size=40, unique_by=lambda value: json.dumps(value)),
    st.randoms(use_true_random=False),
)
@pytest.mark.slow
def test_an_enum_of_values_that_begin_alike_allows_exactly_them(
    matcher: GrammarMatcher, values: list[Any], rng: random.Random
) -> None:
    grammar = json_schema_grammar({"enum": values})
    assert all(matcher.accepts(grammar, json.dumps(value, ensure_ascii=False)) for value in values)
    texts = {json.dumps(value, ensure_ascii=False) for value in values}
    for _ in range(5):
        assert matcher.walk(grammar, rng, limit=40) in texts


def test_a_wide_enum_shares_its_common_beginnings() -> None:
    grammar = json_schema_grammar({"enum": [f"value number {index}" for index in range(2000)]})
    assert grammar.count("value number") == 1  # once, not 2,000 times: the sampler checks each alternative


PATTERNS: dict[str, list[str]] = {
    r"^\d{3}-\d{4}$": ["123-4567", "12-4567", "123-45678", "x123-4567"],
    r"^[A-Z][a-z]+$": ["Hello", "hello", "H", "Hé", "HeLLo"],
    r"ab": ["ab", "xaby", "a", 'b"ab\n'],
    r"^(cat|dog)s?$": ["cat", "dogs", "catss", "bird", ""],
    r'^[^"\\]*$': ["abc", 'a"b', "a\\b", "", "é\n"],
    r'^a"b\\c$': ['a"b\\c', "ab\\c"],
    r"^.{2,4}$": ["ab", "a", "abcd", "abcde", "a\nb", "\t\t", "é€"],
    r"^\w+@\w+\.com$": ["joe@x.com", "joe@x.org", "@x.com"],
    r"^x?$|^y+$": ["", "x", "yyy", "xy"],
    r"^(?:ab){2,}$": ["abab", "ab", "ababab", "abababa"],
    r"^[\s\S]{0,3}$": ["", "abc", "abcd", "a\nb"],
    r"^\u00e9+\x41\/$": ["éA/", "ééA/", "A/"],
    r"^[a\-z.]$": ["a", "-", "z", "b", "."],
    r"^\S+ \s$": ["ab  ", "a\t\t", "a b"],
    r"^a{3,1200}$": ["a" * 2, "a" * 3, "a" * 1200, "a" * 1201],
    r"^$": ["", "a"],
    r"^a(?:)?()b{0}$": ["a", "ab", ""],
}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_match_as_in_python(matcher: GrammarMatcher, pattern: str) -> None:
    assert_exactly_the_valid(matcher, {"type": "string", "pattern": pattern}, as_json(*PATTERNS[pattern]))


def test_where_ecma_262_and_python_differ_patterns_allow_what_both_accept(matcher: GrammarMatcher) -> None:
    # Python's \d, \w and \s know non-ASCII characters, its "." matches "\r" and beyond the BMP.
    texts = as_json("1a b", "١a b", "1ö b", "1a\u3000b", "1a \r", "1a 😀")
    assert accepted(matcher, {"type": "string", "pattern": r"^\d\w\s.$"}, texts) == ['"1a b"']


@pytest.mark.parametrize(
    "pattern",
    [
        r"(?=a)",
        r"(?<!a)b",
        r"(a)\1",
        r"\bfoo",
        r"\p{L}",
        r"a{,3}",
        r"[]",
        r"[^]",
        r"^a^",
        r"a$b",
        r"(^a)",
        r"a{2",
        r"(a",
        r"a)",
        r"*a",
        r"a**",
        r"(a|)+",
        r"[\d-z]",
        r"[z-a]",
        "😀",
        r"\ud83d",
        r"\cA",
        r"\k<x>",
    ],
)
def test_patterns_that_cannot_be_translated_faithfully_are_refused(pattern: str) -> None:
    with pytest.raises(SchemaNotSupported) as refused:
        json_schema_grammar({"properties": {"code": {"type": "string", "pattern": pattern}}})
    assert refused.value.keyword == "pattern" and refused.value.location == "properties.code.pattern"


def test_formats(matcher: GrammarMatcher) -> None:
    dates = as_json("2024-02-29", "2023-02-29", "2000-02-29", "1900-02-29", "2023-04-31", "2023-12-31", "0000-01-01")
    assert accepted(matcher, {"format": "date"}, dates) == as_json("2024-02-29", "2000-02-29", "2023-12-31")
    times = as_json("10:00:00Z", "23:59:59.999+02:00", "24:00:00Z", "10:00:00", "10:60:00Z")
    assert accepted(matcher, {"type": "string", "format": "time"}, times) == times[:2]
    stamps = as_json("2024-01-01T10:00:00Z", "2024-01-01 10:00:00Z", "2024-01-01T10:00:00-05:30")
    assert accepted(matcher, {"format": "date-time"}, stamps) == [stamps[0], stamps[2]]
    uuids = as_json("123e4567-e89b-12d3-A456-426614174000", "123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3")
    assert accepted(matcher, {"format": "uuid"}, uuids) == uuids[:1]


# Objects, arrays, combinations, references.


def test_objects_write_their_members_in_order(matcher: GrammarMatcher) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "null"}},
        "required": ["b"],
    }
    written = ['{"b": "x"}', '{"a": 1, "b": "x"}', '{"b": "x", "c": null}', '{"a": 1, "b": "x", "c": null}']
    others = ['{"a": 1}', "{}", '{"b": "x", "d": 1}', '{"b": "x",}', '{, "b": "x"}', '{"b":"x","a":1}']
    assert accepted(matcher, schema, written + others) == written
    optional = {"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "additionalProperties": False}
    texts = ["{}", '{"a": 1}', '{"b": "x"}', '{"a": 1, "b": "x"}', '{"a": 1,}']
    assert accepted(matcher, optional, texts) == texts[:4]


def test_additional_properties_have_their_schema_and_never_repeat_a_listed_name(matcher: GrammarMatcher) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "ab": {"type": "integer"}},
        "additionalProperties": {"type": "boolean"},
    }
    written = ['{"a": 1, "b": true}', '{"c": false, "": true}', '{"abc": true, "x": false}', '{"a\\"": true}']
    others = ['{"a": true}', '{"ab": true}', '{"\\u0061": true}']
    assert accepted(matcher, schema, written + others) == written
    assert_exactly_the_valid(matcher, {"type": "object"}, ["{}", '{"k": [1, {"x": null}]}', "[]", '"{}"'])
    assert accepted(matcher, {"required": ["id"]}, ['{"id": [1]}', '{"id": 1, "x": 2}', "{}"]) == ['{"id": [1]}']


def test_arrays_count_their_items(matcher: GrammarMatcher) -> None:
    integers = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}
    assert_exactly_the_valid(matcher, integers, ["[]", "[1]", "[1, 2, 3]", "[1,2,3,4]", '["a"]'])
    then_strings = {"prefixItems": [{"type": "integer"}], "items": {"type": "string"}, "minItems": 2, "maxItems": 3}
    assert_exactly_the_valid(matcher, then_strings, ["[1]", '[1, "a"]', '[1, "a", "b"]', '[1, "a", "b", "c"]', "[1,2]"])
    closed = {"prefixItems": [{"type": "integer"}, {"type": "boolean"}], "items": False}
    assert_exactly_the_valid(matcher, closed, ["[]", "[1]", "[1, true]", "[1, true, 2]", "[true]"])
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "items": [{"type": "integer"}],
        "additionalItems": {"type": "null"},
        "maxItems": 2,
    }
    assert accepted(matcher, draft7, ["[1]", "[1, null]", "[1, null, null]", "[null]"]) == ["[1]", "[1, null]"]
    long = [f"[{', '.join(['0'] * count)}]" for count in (1499, 1500, 1501)]
    assert_exactly_the_valid(matcher, {"type": "array", "maxItems": 1500}, long)


def test_any_of_one_of_and_nullable(matcher: GrammarMatcher) -> None:
    texts = ['"a"', "null", "1", "2.5", "true"]
    assert_exactly_the_valid(matcher, {"anyOf": [{"type": "string"}, {"type": "null"}]}, texts)
    assert_exactly_the_valid(matcher, {"type": ["integer", "null"], "minimum": 2}, texts)
    assert_exactly_the_valid(matcher, {"oneOf": [{"type": "string"}, {"type": "integer"}]}, texts)
    beside = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
        "anyOf": [{"properties": {"n": {"maximum": 0}}}, {"properties": {"n": {"minimum": 10}}}],
    }
    assert_exactly_the_valid(matcher, beside, ['{"n": -1}', '{"n": 5}', '{"n": 10}', '{"n": 0}'])
    with pytest.raises(SchemaNotSupported, match="oneOf"):
        json_schema_grammar({"oneOf": [{"type": "number"}, {"type": "integer"}]})
    with pytest.raises(SchemaNotSupported, match="oneOf"):  # [] would satisfy both
        json_schema_grammar({"type": ["object", "array"], "oneOf": [{"minLength": 1}, {"type": "array"}]})


def test_discriminated_unions_as_pydantic_writes_them(matcher: GrammarMatcher) -> None:
    cat = {
        "properties": {
            "kind": {"const": "cat", "title": "Kind", "type": "string"},
            "lives": {"type": "integer", "maximum": 9},
        },
        "required": ["kind", "lives"],
        "title": "Cat",
        "type": "object",
    }
    dog = {"properties": {"kind": {"const": "dog", "type": "string"}}, "required": ["kind"], "type": "object"}
    pet = {"discriminator": {"propertyName": "kind"}, "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]}
    schema = {
        "$defs": {"Cat": cat, "Dog": dog},
        "properties": {"pet": pet},
        "required": ["pet"],
        "title": "Owner",
        "type": "object",
        "additionalProperties": False,
    }
    pets = ['{"kind": "cat", "lives": 9}', '{"kind": "cat", "lives": 10}', '{"kind": "dog"}', '{"kind": "cow"}']
    texts = [f'{{"pet": {text}}}' for text in pets]
    assert_exactly_the_valid(matcher, schema, texts)


def test_refs_recursion_and_all_of(matcher: GrammarMatcher) -> None:
    node = {
        "type": "object",
        "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
        "required": ["v", "next"],
        "additionalProperties": False,
    }
    linked = {"$defs": {"node": node}, "$ref": "#/$defs/node"}
    chains = ['{"v": 1, "next": null}', '{"v": 1, "next": {"v": 2, "next": null}}', '{"v": 1}']
    assert_exactly_the_valid(matcher, linked, chains)
    nested = {"type": "array", "items": {"$ref": "#/definitions/t"}, "maxItems": 2}
    tree = {"definitions": {"t": nested}, "$ref": "#/definitions/t"}
    assert_exactly_the_valid(matcher, tree, ["[]", "[[], [[]]]", "[[], [], []]", "[1]"])
    base = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}, "required": ["a"]}
    more = {"properties": {"a": {"maximum": 5}, "b": {"type": "string"}}, "required": ["b"]}
    merged = {"allOf": [{"$ref": "#/$defs/base"}, more], "$defs": {"base": base}}
    assert_exactly_the_valid(
        matcher, merged, ['{"a": 1, "b": "x"}', '{"a": 0, "b": "x"}', '{"a": 6, "b": ""}', '{"a": 3}']
    )
    beside_ref = {"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n", "maximum": 3, "description": "3 at most"}
    assert_exactly_the_valid(matcher, beside_ref, ["3", "4", '"3"'])


def test_json_object_grammar_is_any_object(matcher: GrammarMatcher) -> None:
    texts = ["{}", '{"a": [1, {"b": null}], "c": "\\n"}', "[]", '"{}"', "1"]
    assert [text for text in texts if matcher.accepts(JSON_OBJECT_GRAMMAR, text)] == texts[:2]


# What is refused.


@pytest.mark.parametrize(
    "schema, keyword, location",
    [
        ({"properties": {"age": {"type": "integer", "multipleOf": 5}}}, "multipleOf", "properties.age.multipleOf"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems", "uniqueItems"),
        ({"not": {"type": "string"}}, "not", "not"),
        ({"if": {}, "then": {}, "else": {}}, "if", "if"),
        ({"patternProperties": {"^x": {}}}, "patternProperties", "patternProperties"),
        ({"propertyNames": {"maxLength": 3}}, "propertyNames", "propertyNames"),
        ({"items": {"contains": {"type": "null"}}}, "contains", "items.contains"),
        ({"minProperties": 1}, "minProperties", "minProperties"),
        ({"maxProperties": 1}, "maxProperties", "maxProperties"),
        ({"dependentRequired": {"a": ["b"]}}, "dependentRequired", "dependentRequired"),
        ({"unevaluatedProperties": False}, "unevaluatedProperties", "unevaluatedProperties"),
        ({"anyOf": [{"type": "string", "format": "email"}]}, "format", "anyOf.0.format"),
        ({"type": "string", "nullable": True}, "nullable", "nullable"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "maxLength", "maxLength"),
        ({"$defs": {"x": {"$dynamicRef": "#x"}}, "$ref": "#/$defs/x"}, "$dynamicRef", "$defs.x.$dynamicRef"),
        ({"type": "object", "properties": {"a": {"$id": "other"}}}, "$id", "properties.a.$id"),
        ({"enum": ["a"], "maxLength": 3}, "maxLength", "maxLength"),
    ],
)
def test_keywords_the_grammar_cannot_enforce_are_refused_by_name(schema: Schema, keyword: str, location: str) -> None:
    with pytest.raises(SchemaNotSupported) as refused:
        json_schema_grammar(schema)
    assert (refused.value.keyword, refused.value.location) == (keyword, location)
    assert f"'{keyword}'" in str(refused.value)


@pytest.mark.parametrize(
    "schema, keyword",
    [
        ({"$ref": "#/$defs/missing"}, "$ref"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"$ref": "#anchor"}, "$ref"),
        ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}, "$ref"),
        ({"allOf": [{"$ref": "#"}]}, "$ref"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "maximum"),
        ({"type": "number", "minimum": 5, "exclusiveMaximum": 5}, "exclusiveMaximum"),
        ({"type": "string", "minLength": 4, "maxLength": 3}, "maxLength"),
        ({"type": "array", "minItems": 2, "maxItems": 1}, "maxItems"),
        ({"prefixItems": [{}], "items": False, "minItems": 2}, "minItems"),
        ({"type": "int"}, "type"),
        ({"minLength": "3"}, "minLength"),
        ({"minimum": True}, "minimum"),
        ({"exclusiveMinimum": True, "minimum": 3}, "exclusiveMinimum"),
        ({"required": "a"}, "required"),
        ({"properties": []}, "properties"),
        ({"enum": []}, "enum"),
        ({"type": "string", "enum": [1, 2]}, "enum"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "type"),
        ({"allOf": [{"pattern": "a"}, {"pattern": "b"}]}, "pattern"),
        ({"properties": {"a": False}, "required": ["a"]}, "required"),
        ({"additionalProperties": False, "required": ["a"]}, "required"),
        ({"anyOf": [False]}, "anyOf"),
        ({"items": False, "minItems": 1}, "minItems"),
    ],
)
def test_invalid_or_impossible_schemas_are_refused(schema: Schema, keyword: str) -> None:
    with pytest.raises(SchemaNotSupported) as refused:
        json_schema_grammar(schema)
    assert refused.value.keyword == keyword


def test_annotations_constrain_nothing() -> None:
    annotations = {
        "title": "T",
        "description": "D",
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://example.com/s",
        "$comment": "c",
        "examples": [1],
        "default": 2,
        "deprecated": False,
        "readOnly": True,
        "writeOnly": False,
        "x-vendor": {"$ref": "#/nowhere"},
    }
    plain = {"type": "integer", "minimum": 1}
    assert json_schema_grammar({**plain, **annotations}) == json_schema_grammar(plain)


# Generated schemas: each compiles in llama.cpp or is refused; whatever gets written validates.

GENERATED = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TYPES = ["string", "integer", "number", "null", "boolean", "object", "array"]
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)


@st.composite
def fuzzed_schemas(draw: st.DrawFn, depth: int = 0) -> Any:
    """Schema-like objects: known and unknown keywords with values right or wrong."""
    if depth > 2 or draw(st.integers(0, 4)) == 0:
        return draw(st.booleans() | st.just({}) | st.fixed_dictionaries({"type": st.sampled_from(TYPES)}))
    child = fuzzed_schemas(depth + 1)
    children = st.lists(child, max_size=3)
    values: dict[str, st.SearchStrategy] = {
        "type": st.sampled_from(TYPES) | st.lists(st.sampled_from(TYPES[:3]), max_size=3) | JSON_SCALARS,
        **dict.fromkeys(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"], JSON_SCALARS),
        **dict.fromkeys(["const", "multipleOf", "title", "x-extra"], JSON_SCALARS),
        **dict.fromkeys(["minLength", "maxLength"], st.integers(-1, 3000) | JSON_SCALARS),
        **dict.fromkeys(["minItems", "maxItems"], st.integers(0, 4)),
        "pattern": st.sampled_from(["^a+$", "[0-9]{2,}", "(x|y)?z", "\\d\\", "(?=a)", "[^\\]]"]) | st.text(max_size=6),
        "format": st.sampled_from(["date", "time", "date-time", "uuid", "email", 3]),
        "enum": st.lists(JSON_SCALARS, max_size=3),
        "properties": st.dictionaries(st.text(max_size=4), child, max_size=3),
        "required": st.lists(st.text(max_size=4), max_size=3),
        "additionalProperties": child,
        "items": child | children,
        **dict.fromkeys(["prefixItems", "anyOf", "oneOf", "allOf"], children),
        "$ref": st.sampled_from(["#", "#/$defs/a", "#/$defs/b", "#/nope", "#/properties/x", "https://x"]),
        "$defs": st.fixed_dictionaries({"a": child}, optional={"b": child}),
        "uniqueItems": st.booleans(),
    }
    keys = draw(st.lists(st.sampled_from(sorted(values)), max_size=4, unique=True))
    return {key: draw(values[key]) for key in keys}


@settings(GENERATED, max_examples=300)
@given(fuzzed_schemas())
@pytest.mark.slow
def test_any_schema_compiles_in_llama_cpp_or_is_refused(matcher: GrammarMatcher, schema: Any) -> None:
    assume(isinstance(schema, dict))
    try:
        grammar = json_schema_grammar(schema)
    except SchemaNotSupported as refused:
        assert f"'{refused.keyword}'" in str(refused)
        return
    matcher.accepts(grammar, "")  # compiles, or the matcher fails


SPACE = 22  # the most whitespace a grammar allows in one place ("\n\n" and 20 blanks or tabs)
NAMES = st.sampled_from(["name", "age", "tags", "id", "note", "ok", "score", "when"])
# Assigned characters: SmolLM2's vocabulary cannot spell planes 4-11 (no token has their bytes).
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cn"], exclude_characters="\x00"), max_size=5)
PATTERN_LENGTHS = {
    r"^[a-z]{1,8}$": 8,
    r"^\d{3}-\d{4}$": 8,
    r"^(cat|dog|bird)s?$": 5,
    r"^[A-Z][a-z]{0,6}( [A-Z][a-z]{0,6})?$": 15,
    r"^#[0-9a-fA-F]{6}$": 7,
    r'^[^"\\]{0,5}$': 5,
    r"^x{1,4}y?$|^z$": 5,
}
FORMAT_LENGTHS = {"date": 10, "time": 18, "date-time": 29, "uuid": 36}
LEAVES = ["integer", "number", "string", "enum", "const", "pattern", "format", "boolean", "nullable"]


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


@st.composite
def bounded_schemas(draw: st.DrawFn, depth: int = 0) -> tuple[Schema, int]:
    """A schema, and the most bytes (so tokens) any answer the grammar lets be written for it
    can have: max_tokens that no valid answer can run past."""
    kind = draw(st.sampled_from(LEAVES + (["object", "object", "array", "anyOf", "ref"] if depth < 2 else [])))
    if kind in ("integer", "number", "string", "enum", "const", "pattern", "format", "boolean"):
        return _bounded_leaf(draw, kind)
    if kind == "nullable":
        inner, size = draw(bounded_schemas(depth=2).filter(lambda case: isinstance(case[0].get("type"), str)))
        return {**inner, "type": [inner["type"], "null"]}, max(size, 4)
    if kind == "object":
        return draw(object_schemas(depth))
    if kind == "array":
        item, size = draw(bounded_schemas(depth=depth + 1))
        most = draw(st.integers(0, 3))
        schema = {"type": "array", "items": item, "minItems": draw(st.integers(0, most)), "maxItems": most}
        return schema, 2 + 2 * SPACE + most * (size + 1 + SPACE)
    if kind == "anyOf":
        options = draw(st.lists(bounded_schemas(depth=depth + 1), min_size=1, max_size=3))
        return {"anyOf": [option for option, _ in options]}, max(size for _, size in options)
    inner, size = draw(bounded_schemas(depth=depth + 1))
    return {"$ref": "#/$defs/thing", "$defs": {"thing": inner}}, size


def _bounded_leaf(draw: st.DrawFn, kind: str) -> tuple[Schema, int]:
    """A schema of a kind without members, and the most bytes an answer to it can have."""
    if kind in ("integer", "number"):
        schema: Schema = {"type": kind}
        low = draw(st.integers(-1000, 1000))
        for keyword, value in (("minimum", low), ("maximum", low + draw(st.integers(2, 3000)))):
            if draw(st.booleans()):
                fraction = 0 if kind == "integer" else draw(st.sampled_from([0, 0.25, 0.5]))
                schema[draw(st.sampled_from([keyword, f"exclusive{keyword.capitalize()}"]))] = value + fraction
        return schema, 40  # "-", 16 digits, ".", 16 digits, "e-99"
    if kind == "string":
        high = draw(st.integers(0, 12))
        return {"type": "string", "minLength": draw(st.integers(0, min(high, 3))), "maxLength": high}, 2 + 6 * high
    if kind in ("enum", "const"):
        scalars = JSON_SCALARS.filter(lambda value: not isinstance(value, str)) | TEXT
        values = draw(st.lists(scalars, min_size=1, max_size=4, unique_by=json.dumps))
        return {"enum": values} if kind == "enum" else {"const": values[0]}, max(map(_json_bytes, values))
    if kind == "pattern":
        pattern = draw(st.sampled_from(sorted(PATTERN_LENGTHS)))
        return {"type": "string", "pattern": pattern}, 2 + 6 * PATTERN_LENGTHS[pattern]
    if kind == "format":
        name = draw(st.sampled_from(sorted(FORMAT_LENGTHS)))
        return {"type": "string", "format": name}, 2 + FORMAT_LENGTHS[name]
    assert kind == "boolean", kind
    return {"type": "boolean"}, 5


@st.composite
def object_schemas(draw: st.DrawFn, depth: int = 0) -> tuple[Schema, int]:
    """An object of up to three members of any bounded kind, some required, maybe closed."""
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    members = {name: draw(bounded_schemas(depth=depth + 1)) for name in names}
    schema = {
        "type": "object",
        "properties": {name: member for name, (member, _) in members.items()},
        "required": draw(st.lists(st.sampled_from(names), unique=True)),
    }
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    # Each member: its name in quotes, ":", ",", whitespace around them and its value.
    return schema, 2 + 2 * SPACE + sum(len(name) + 4 + 3 * SPACE + size for name, (_, size) in members.items())


def refs_at_top(case: tuple[Schema, int]) -> tuple[Schema, int]:
    """`$ref`s point into the whole document: nested `$defs` move to the top, renamed."""
    definitions: dict[str, Any] = {}

    def lift(node: Any) -> Any:
        if isinstance(node, list):
            return [lift(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: value if key in ("enum", "const") else lift(value) for key, value in node.items()}
        if "$defs" in node:
            name = f"thing{len(definitions)}"
            definitions[name] = node.pop("$defs")["thing"]
            node["$ref"] = f"#/$defs/{name}"
        return node

    schema, size = case
    lifted = lift(schema)
    return ({**lifted, "$defs": definitions} if definitions else lifted), size


@settings(GENERATED, max_examples=30)
@given((bounded_schemas() | object_schemas()).map(refs_at_top), st.randoms(use_true_random=False))
@pytest.mark.slow
def test_random_walks_through_a_grammar_write_valid_json(
    matcher: GrammarMatcher, case: tuple[Schema, int], rng: random.Random
) -> None:
    schema, size = case
    grammar = json_schema_grammar(schema)
    for _ in range(2):
        text = matcher.walk(grammar, rng, limit=size + 1)
        assert text is not None, f"no end within {size} tokens: {schema}"
        assert validator(schema).is_valid(json.loads(text)), (schema, text)


@settings(GENERATED, max_examples=12)
@given(object_schemas().map(refs_at_top), st.integers(0, 2**31))
def test_generated_answers_validate_for_every_schema_and_seed(
    daphne_server: DaphneServer, case: tuple[Schema, int], seed: int
) -> None:
    schema, size = case
    assume(size <= 2000)
    response = daphne_server.chat(
        SMOLLM2,
        messages=[{"role": "user", "content": f"Answer in JSON matching this schema: {json.dumps(schema)}"}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
        max_tokens=size + 1,  # and the end of sequence
        temperature=1.5,
        seed=seed,
        n=3,
    )
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert choice["finish_reason"] == "stop", (schema, choice)
        assert validator(schema).is_valid(json.loads(choice["message"]["content"])), (schema, choice)


@pytest.mark.slow
async def test_json_schema_output_validates_every_time(use_config) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 30},
            "indoor": {"type": "boolean"},
        },
        "required": ["name", "age", "indoor"],
        "additionalProperties": False,
    }
    for seed in range(3):
        response = await AsyncClient().post(
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "Describe a cat."}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}},
                "max_tokens": 100,
                "temperature": 1.0,
                "seed": seed,
            },
            content_type="application/json",
        )
        body = response.json()
        assert body["choices"][0]["finish_reason"] == "stop", body
        jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)


# Refusals over HTTP.


def error_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    validate_openai("ErrorResponse", response.json())
    return response.json()["error"]


@pytest.mark.parametrize(
    "keyword, schema",
    [
        ("multipleOf", {"type": "object", "properties": {"age": {"type": "integer", "multipleOf": 2}}}),
        ("format", {"type": "string", "format": "email"}),
        ("$ref", {"$ref": "#/$defs/missing"}),
        ("maximum", {"type": "integer", "minimum": 3, "maximum": 1}),
    ],
)
def test_a_response_format_that_cannot_be_enforced_is_a_400_naming_the_keyword(
    daphne_server: DaphneServer, keyword: str, schema: Schema
) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    error = error_of(daphne_server.chat(SMOLLM2, response_format=response_format))
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    assert f"'{keyword}'" in error["message"]


def test_a_forced_tool_call_whose_parameters_cannot_be_enforced_is_a_400_on_tools(daphne_server: DaphneServer) -> None:
    parameters = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    tool = {"type": "function", "function": {"name": "tag", "parameters": parameters}}
    error = error_of(daphne_server.chat(SMOLLM2, tools=[tool], tool_choice="required"))
    assert error["param"] == "tools" and "'uniqueItems'" in error["message"]
    # Offered but not forced, the schema is only shown to the model: no grammar, no refusal.
    assert daphne_server.chat(SMOLLM2, tools=[tool], tool_choice="auto").status_code == 200
