"""A JSON schema is client input: its grammar is built off the event loop, within a bound on
the work and the grammar's size (past it: a 400 naming the schema), cached by schema, and not
built at all for counting tokens. The server keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
from typing import Any

import httpx
import pytest
from django.test import AsyncClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.grammar import SchemaRefused, compiler
from inference.grammar.budget import MAX_GRAMMAR_BYTES, Budget
from inference.grammar.schema import json_schema_grammar
from tests.conftest import SMOLLM2, DaphneServer, validate_anthropic_error, validate_openai

HELLO = [{"role": "user", "content": "Hi"}]


def all_of_chain(depth: int, leaf: dict[str, Any] | None = None) -> dict[str, Any]:
    """The issue's schema: each level an allOf of the next level twice (2^depth copies if each
    $ref were expanded where it is used)."""
    definitions: dict[str, Any] = {
        f"d{level}": {"allOf": [{"$ref": f"#/$defs/d{level + 1}"}, {"$ref": f"#/$defs/d{level + 1}"}]}
        for level in range(depth)
    }
    definitions[f"d{depth}"] = leaf or {"type": "string"}
    return {"$defs": definitions, "$ref": "#/$defs/d0"}


def any_of_chain(depth: int, leaf: str = "a") -> dict[str, Any]:
    """Each level an anyOf of the next level twice, with a keyword beside it (so each
    alternative is merged with it, not a $ref the converter can share); 2 KiB at depth 24."""
    definitions: dict[str, Any] = {
        f"d{level}": {"type": "object", "anyOf": [{"$ref": f"#/$defs/d{level + 1}"}, {"$ref": f"#/$defs/d{level + 1}"}]}
        for level in range(depth)
    }
    definitions[f"d{depth}"] = {"type": "object", "properties": {leaf: {"type": "string"}}}
    return {"$defs": definitions, "$ref": "#/$defs/d0"}


def one_of_objects(width: int) -> dict[str, Any]:
    """A oneOf whose alternatives must each be checked against each other: width² checks."""
    return {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": index}}, "required": ["kind"]} for index in range(width)
        ]
    }


def spent(schema: dict[str, Any]) -> int:
    budget = Budget(steps=10**12, grammar_bytes=10**12)
    json_schema_grammar(schema, budget)
    return 10**12 - budget.steps_left


def test_a_ref_used_twice_in_an_all_of_is_expanded_once() -> None:
    # Linear in the depth: 2^40 expansions would never end.
    assert spent(all_of_chain(40)) < 2 * spent(all_of_chain(20)) < 20_000
    assert json_schema_grammar(all_of_chain(40)) == json_schema_grammar(
        {"$defs": {"d0": {"type": "string"}}, "$ref": "#/$defs/d0"}
    )


def test_a_one_of_of_many_constants_is_told_apart_in_one_pass() -> None:
    schema = {"oneOf": [{"const": f"value {index}"} for index in range(700)]}
    assert spent(schema) < 100_000  # pairwise, 490,000 checks
    with pytest.raises(SchemaRefused, match="oneOf"):
        compiler.cached_schema_grammar({"oneOf": [{"const": "a"}, {"enum": ["b", "a"]}]})


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        (any_of_chain(24), "steps"),
        (one_of_objects(700), "steps"),
        ({"enum": [f"value number {index}" for index in range(40_000)]}, "steps|KiB"),
        ({"type": "string", "pattern": "^(" + "|".join(f"w{index}" for index in range(60_000)) + ")$"}, "steps"),
    ],
    ids=["anyOf chain", "wide oneOf", "wide enum", "long pattern"],
)
def test_a_schema_past_the_bound_is_refused_as_too_complex(schema: dict[str, Any], why: str) -> None:
    with pytest.raises(SchemaRefused, match=why) as refused:
        compiler.cached_schema_grammar(schema)
    assert refused.value.too_complex


# Shapes that cost the most per byte of schema: chains of $ref through allOf and anyOf, wide
# oneOf/enum, long patterns, wide objects; nested in each other.
def costly_schemas() -> st.SearchStrategy[dict[str, Any]]:
    leaves = st.one_of(
        st.builds(all_of_chain, st.integers(1, 60)),
        st.builds(any_of_chain, st.integers(1, 30)),
        st.builds(one_of_objects, st.integers(1, 1200)),
        st.integers(1, 30_000).map(lambda width: {"enum": [f"v{index}" for index in range(width)]}),
        st.integers(1, 20_000).map(lambda width: {"oneOf": [{"const": index} for index in range(width)]}),
        st.text("ab|()?*+", min_size=1, max_size=3000).map(lambda pattern: {"type": "string", "pattern": pattern}),
        st.integers(1, 3000).map(
            lambda width: {
                "type": "object",
                "properties": {f"p{index}": {"type": "integer", "minimum": index} for index in range(width)},
            }
        ),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=4).map(lambda parts: {"anyOf": parts}),
            st.lists(inner, min_size=1, max_size=4).map(lambda parts: {"type": "array", "prefixItems": parts}),
            st.dictionaries(st.sampled_from("abcdef"), inner, min_size=1).map(
                lambda members: {"type": "object", "properties": members, "required": sorted(members)}
            ),
        ),
        max_leaves=6,
    )


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(costly_schemas())
@pytest.mark.slow
def test_every_schema_is_built_within_the_bound_or_refused(schema: dict[str, Any]) -> None:
    """The bound is counted in steps, so this holds on any machine; the CPU time is a backstop
    for work the count misses (the bound is about half a second here: 10 s would mean a step
    went uncounted)."""
    started = time.thread_time()
    try:
        grammar = compiler.cached_schema_grammar(schema)
    except SchemaRefused:
        pass
    else:
        assert len(grammar) <= MAX_GRAMMAR_BYTES
    assert time.thread_time() - started < 10


def test_grammars_are_cached_by_schema_refusals_too(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []

    def counting(schema: dict[str, Any], budget: Budget) -> str:
        built.append(schema)
        return json_schema_grammar(schema, budget)

    monkeypatch.setattr(compiler, "json_schema_grammar", counting)
    monkeypatch.setattr(compiler, "cache", compiler.GrammarCache())
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    first = compiler.cached_schema_grammar(schema)
    assert compiler.cached_schema_grammar(dict(reversed(schema.items()))) is first  # same schema, other key order
    for _ in range(2):
        with pytest.raises(SchemaRefused, match="multipleOf"):
            compiler.cached_schema_grammar({"type": "integer", "multipleOf": 3})
    assert len(built) == 2


def test_the_cache_keeps_to_its_bytes() -> None:
    cache = compiler.GrammarCache(max_bytes=10_000)
    for index in range(50):
        cache.put(index.to_bytes(4, "big"), "x" * 1000)
    assert cache.size <= 10_000 and len(cache) < 10
    assert cache.get((49).to_bytes(4, "big")) is not None and cache.get((0).to_bytes(4, "big")) is None


async def test_grammars_are_built_on_their_own_thread_not_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []

    def recording(schema: dict[str, Any], budget: Budget) -> str:
        threads.append(threading.current_thread().name)
        return json_schema_grammar(schema, budget)

    monkeypatch.setattr(compiler, "json_schema_grammar", recording)
    monkeypatch.setattr(compiler, "cache", compiler.GrammarCache())
    await compiler.schema_grammar({"type": "boolean"})
    assert threads and threads[0].startswith("grammar") and threads[0] != threading.current_thread().name


TOO_COMPLEX = any_of_chain(24)


async def post(path: str, body: dict[str, Any], **headers: str) -> Any:
    return await AsyncClient().post(path, body, content_type="application/json", headers=headers)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {
                "messages": HELLO,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": TOO_COMPLEX}},
            },
            "response_format",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": HELLO,
                "tool_choice": "required",
                "tools": [{"type": "function", "function": {"name": "f", "parameters": TOO_COMPLEX}}],
            },
            "tools",
        ),
        (
            "/v1/responses",
            {"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": TOO_COMPLEX}}},
            "text.format",
        ),
        (
            "/v1/messages",
            {
                "messages": HELLO,
                "max_tokens": 5,
                "output_config": {"format": {"type": "json_schema", "schema": TOO_COMPLEX}},
            },
            "output_config.format",
        ),
    ],
    ids=["chat", "forced tool", "responses", "messages"],
)
async def test_a_schema_too_complex_is_a_400_naming_it(use_config, path: str, body: dict[str, Any], param: str) -> None:
    response = await post(path, {"model": SMOLLM2, **body})
    assert response.status_code == 400, response.content
    if path == "/v1/messages":
        validate_anthropic_error(response.json())
        message = response.json()["error"]["message"]
    else:
        validate_openai("ErrorResponse", response.json())
        assert response.json()["error"]["param"] == param
        message = response.json()["error"]["message"]
    assert param in message and "too complex" in message


async def test_counting_tokens_builds_no_grammar(use_config, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(schema: dict[str, Any]) -> str:
        raise AssertionError("a grammar was built to count tokens")

    monkeypatch.setattr(compiler, "cached_schema_grammar", never)
    body = {
        "model": SMOLLM2,
        "messages": HELLO,
        "output_config": {"format": {"type": "json_schema", "schema": TOO_COMPLEX}},
    }
    response = await post("/v1/messages/count_tokens", body)
    assert response.status_code == 200, response.content
    assert response.json()["input_tokens"] > 0


HEALTH_LIMIT_MS = 50


async def test_health_answers_while_costly_schemas_are_built(daphne_server: DaphneServer) -> None:
    """Eight costly schemas (each the bound's worth of work, none the same, so none is cached;
    small, so that reading the requests costs the loop little) while /health is asked every
    20 ms: its answers within 50 ms (all but the slowest, which may meet a hiccup of the
    machine's; before the bound and the grammar thread, it waited seconds, and before the
    server froze its startup objects, a full collection stalled it 60-90 ms)."""
    schemas = [any_of_chain(24, leaf=f"leaf{index}") for index in range(8)]

    async def chat(client: httpx.AsyncClient, schema: dict[str, Any]) -> httpx.Response:
        body = {
            "model": SMOLLM2,
            "messages": HELLO,
            "max_tokens": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        }
        return await client.post("/v1/chat/completions", json=body)

    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=120) as client:
        await client.get("/health")
        requests = [asyncio.create_task(chat(client, schema)) for schema in schemas]
        latencies = []
        gc.disable()  # this test process's own collections are not the server's latency
        try:
            while not all(request.done() for request in requests):
                started = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.02)
        finally:
            gc.enable()
        answers = [request.result() for request in requests]
    assert all(answer.status_code == 400 and "too complex" in answer.text for answer in answers), answers[0].text
    assert len(latencies) > 10  # the schemas kept the grammar thread busy a while
    slowest = sorted(latencies)[-3:]
    assert slowest[-2] < HEALTH_LIMIT_MS and slowest[-1] < 5 * HEALTH_LIMIT_MS, (statistics.median(latencies), slowest)
