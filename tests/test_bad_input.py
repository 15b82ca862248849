"""Whatever a client sends, the answer is a 4xx in its API's shape (OpenAI's, or Anthropic's on
/v1/messages), never a 5xx, and the server keeps answering: hand-picked bodies and
hypothesis-generated ones, against a real daphne."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SMOLLM2, DaphneServer, validate_anthropic_error, validate_openai

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
RESPONSES = "/v1/responses"
MESSAGES, COUNT_TOKENS = "/v1/messages", "/v1/messages/count_tokens"
HELLO = [{"role": "user", "content": "Hi"}]
# Valid bodies (max_tokens 1: if a mutation were accepted after all, it costs little).
VALID = {
    CHAT: {"model": SMOLLM2, "messages": HELLO, "max_tokens": 1},
    COMPLETIONS: {"model": SMOLLM2, "prompt": "Hi", "max_tokens": 1},
    EMBEDDINGS: {"model": SMOLLM2, "input": "Hi"},
    RESPONSES: {"model": SMOLLM2, "input": "Hi", "max_output_tokens": 1},
    MESSAGES: {"model": SMOLLM2, "messages": HELLO, "max_tokens": 1},
}
WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def blocks(*content: Any, role: str = "user") -> list[dict[str, Any]]:
    return [{"role": role, "content": list(content)}]


JSON_TYPE = "application/json"
# Over max_body_bytes' default: 8 MiB of text and one 20 MiB image in base64 (26.7 MiB).
OVER_THE_BODY_LIMIT = b"x" * (35 * 1024 * 1024)


def deep(depth: int) -> bytes:
    return b'{"model": "x", "messages": ' + b"[" * depth + b"]" * depth + b"}"


def body(path: str, **changes: Any) -> bytes:
    return json.dumps({**VALID[path], **changes}).encode()


# Changes that make a valid /v1/messages body wrong: what Anthropic's API refuses, and what this
# server cannot serve (corrupt images, documents).
ANTHROPIC_MISTAKES: list[dict[str, Any]] = [
    {"messages": blocks({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}})},
    {"messages": blocks({"type": "document", "source": {"type": "text", "data": "x"}})},
    {"messages": blocks({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]})},
    {"messages": blocks({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "search_result"}]})},
    {"messages": blocks({"type": "tool_result", "tool_use_id": 7})},
    {"messages": blocks({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"})},
    {"messages": blocks({"type": "tool_result", "tool_use_id": "t"}, role="assistant")},
    {"messages": blocks({"type": "tool_use", "id": "t", "name": "f", "input": {}})},
    {"messages": blocks({"type": "tool_use", "id": "t", "name": "f", "input": "{}"}, role="assistant")},
    {"messages": blocks({"type": "tool_use", "id": "t", "input": {}}, role="assistant")},
    {"messages": blocks({"type": "thinking"}, role="system")},
    {"messages": blocks({"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}, role="assistant")},
    {"messages": blocks({"type": "text"})},
    {"messages": blocks({"text": "no type"})},
    {"messages": blocks("a bare string")},
    {"messages": [{"role": "tool", "content": "x"}]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"content": "Hi"}]},
    {"messages": []},
    {"messages": [{"role": "user", "content": "Hi " * 10_000}]},  # longer than the context
    {"system": 7},
    {"system": [{"type": "image", "source": {}}]},
    {"system": [{"type": "text", "text": 5}]},
    {"tools": [{"name": "has space", "input_schema": {}}]},
    {"tools": [{"name": "x" * 129, "input_schema": {}}]},
    {"tools": [{"name": "f"}]},
    {"tools": [{"name": "f", "input_schema": "{}"}]},
    {"tools": [{"name": "f", "input_schema": {}, "description": 5}]},
    {"tools": [{"type": "web_search_20250305"}]},
    {"tools": [{"type": 5, "name": "f"}]},
    {"tools": ["get_weather"]},
    {"tools": [{**WEATHER, "name": f"f{i}"} for i in range(129)]},
    {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}},
    {"tools": [WEATHER], "tool_choice": {"type": "tool"}},
    {"tools": [WEATHER], "tool_choice": "auto"},  # an object in Anthropic's API
    {"tools": [WEATHER], "tool_choice": {"type": "required"}},
    {"tools": [WEATHER], "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}},
    {"tools": [{"type": "bash_20250124", "name": "bash"}], "tool_choice": {"type": "any"}},
    {"tool_choice": {"type": "any"}},
    {"tools": [{**WEATHER, "input_schema": {"$ref": "#/nope"}}], "tool_choice": {"type": "any"}},
    {"stop_sequences": "END"},
    {"stop_sequences": [""]},
    {"stop_sequences": [5]},
    {"stop_sequences": [f"s{i}" for i in range(17)]},
    {"max_tokens": 0},
    {"max_tokens": 2**31},
    {"max_tokens": "32000"},
    {"temperature": 1.5},
    {"top_k": -1},
    {"metadata": "user"},
    {"metadata": {"user_id": 5}},
    {"metadata": {"user_id": "u" * 257}},
    {"thinking": "enabled"},
    {"output_config": "high"},
    {"output_config": {"format": {"type": "json_object"}}},
    {"output_config": {"format": {"type": "json_schema", "schema": {"$ref": "#/nope"}}}},
    {"stream": "true"},
    {"model": "no-such-model"},
]

# Bodies no API takes: the classic ways to get a request wrong.
MALFORMED_BODIES: tuple[bytes, ...] = (
    b"",
    b" ",
    b"{",
    b"}",
    b"[]",
    b"null",
    b"42",
    b'"text"',
    b"{'single': 'quotes'}",
    b'{"model": "x",}',
    b"\xff\xfe\x00",
    b"\xef\xbb\xbf{}",
    '{"a": "é"}'.encode("utf-16"),
    b'{"max_tokens": NaN}',
    b'{"temperature": Infinity}',
    b'{"n": -Infinity}',
    b'{"messages": "\\ud800"}',
    b'{"prompt": "\\udfff"}',
    b'{"input": "\\ud83d"}',
    b'{"n": 1' + b"0" * 5000 + b"}",
    b"\x00" * 100,
    deep(100),
    deep(100_000),
    b'{"model": "' + b"a" * 100_000 + b'"}',
)

# Models no request may name (a path, a name not quite right, not a string).
MODEL_MISTAKES: tuple[Any, ...] = (
    "../" + SMOLLM2,
    "/etc/passwd",
    f"models/{SMOLLM2}",
    SMOLLM2 + "\x00",
    "..",
    ".",
    "",
    " ",
    SMOLLM2.upper(),
    7,
    [SMOLLM2],
    {"id": SMOLLM2},
    True,
)

# (path, body, content type): the classic ways to get a request wrong.
HAND_PICKED: list[tuple[str, bytes, str]] = [
    *((path, raw, JSON_TYPE) for path in VALID for raw in MALFORMED_BODIES),
    *((path, body(path), "application/json; charset=utf-32") for path in VALID),
    *((path, body(path, model=model), JSON_TYPE) for path in VALID for model in MODEL_MISTAKES if model != ""),
    (CHAT, body(CHAT, messages=[{"role": "user", "content": "a"}] * 2049), JSON_TYPE),
    (CHAT, body(CHAT, messages=[{"role": "user", "content": [{"type": "text"}]}]), JSON_TYPE),
    (CHAT, body(CHAT, messages=[{"role": "user", "content": "Hi" * 10_000}] * 4), JSON_TYPE),
    (CHAT, body(CHAT, tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]), JSON_TYPE),
    (CHAT, body(CHAT, logit_bias={str(2**40): 1}), JSON_TYPE),
    (CHAT, body(CHAT, logit_bias={"49152": 1}), JSON_TYPE),  # one past SmolLM2's vocabulary
    (
        CHAT,
        body(CHAT, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}),
        JSON_TYPE,
    ),
    (CHAT, body(CHAT, n=4, max_tokens=2**31), JSON_TYPE),
    (CHAT, body(CHAT, stream=True, stream_options={"include_usage": "yes"}), JSON_TYPE),
    (COMPLETIONS, body(COMPLETIONS, prompt=["a"] * 65), JSON_TYPE),  # more prompts than max_queue
    (COMPLETIONS, body(COMPLETIONS, prompt=[1, 2, 3]), JSON_TYPE),
    (COMPLETIONS, body(COMPLETIONS, prompt="Hi " * 20_000), JSON_TYPE),
    (COMPLETIONS, body(COMPLETIONS, best_of=3), JSON_TYPE),
    (EMBEDDINGS, body(EMBEDDINGS, input=[-1, 5]), JSON_TYPE),
    (EMBEDDINGS, body(EMBEDDINGS, input=[2**40]), JSON_TYPE),
    (EMBEDDINGS, body(EMBEDDINGS, input=["a"] * 2049), JSON_TYPE),
    (EMBEDDINGS, body(EMBEDDINGS, input="Hi " * 20_000), JSON_TYPE),
    (EMBEDDINGS, body(EMBEDDINGS, dimensions=8), JSON_TYPE),
    (EMBEDDINGS, body(EMBEDDINGS, encoding_format="hex"), JSON_TYPE),
    (CHAT, OVER_THE_BODY_LIMIT, JSON_TYPE),  # a 413
    (RESPONSES, body(RESPONSES, input=[{"role": "user", "content": "a"}] * 2049), JSON_TYPE),
    (
        RESPONSES,
        body(RESPONSES, input=[{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]),
        JSON_TYPE,
    ),
    (RESPONSES, body(RESPONSES, input=[{"type": "function_call_output", "output": "no call id"}]), JSON_TYPE),
    (RESPONSES, body(RESPONSES, input=[{"type": "item_reference", "id": "msg_1"}]), JSON_TYPE),
    (RESPONSES, body(RESPONSES, input="Hi " * 20_000), JSON_TYPE),
    (RESPONSES, body(RESPONSES, previous_response_id="resp_unknown"), JSON_TYPE),
    (RESPONSES, body(RESPONSES, background=True), JSON_TYPE),
    (RESPONSES, body(RESPONSES, tools=[{"type": "function", "name": f"f{i}"} for i in range(129)]), JSON_TYPE),
    (RESPONSES, body(RESPONSES, tools=[{"type": "namespace", "name": "n", "tools": "x"}]), JSON_TYPE),
    (
        RESPONSES,
        body(RESPONSES, text={"format": {"type": "json_schema", "name": "x", "schema": {"$ref": "#/nope"}}}),
        JSON_TYPE,
    ),
    (
        RESPONSES,
        body(RESPONSES, tool_choice={"type": "function", "name": "missing"}, tools=[{"type": "function", "name": "f"}]),
        JSON_TYPE,
    ),
    (RESPONSES, body(RESPONSES, metadata={str(n): "v" for n in range(17)}), JSON_TYPE),
    (CHAT, body(CHAT, tool_choice={"type": "function", "function": "get_weather"}), JSON_TYPE),  # found by schemathesis
    *((MESSAGES, body(MESSAGES, **changes), JSON_TYPE) for changes in ANTHROPIC_MISTAKES),
    (
        MESSAGES,
        json.dumps({key: value for key, value in VALID[MESSAGES].items() if key != "max_tokens"}).encode(),
        JSON_TYPE,
    ),
    (MESSAGES, OVER_THE_BODY_LIMIT, JSON_TYPE),
    (COUNT_TOKENS, json.dumps({"model": SMOLLM2}).encode(), JSON_TYPE),
    (COUNT_TOKENS, json.dumps({"model": "nope", "messages": HELLO}).encode(), JSON_TYPE),
    (COUNT_TOKENS, json.dumps({"messages": blocks({"type": "image", "source": {}})}).encode(), JSON_TYPE),
    (COUNT_TOKENS, b"[]", JSON_TYPE),
]


def assert_refused(server: DaphneServer, path: str, raw: bytes, content_type: str) -> None:
    response = httpx.post(f"{server.url}{path}", content=raw, headers={"Content-Type": content_type}, timeout=60)
    assert 400 <= response.status_code < 500, (path, raw[:200], response.status_code, response.text[:500])
    if path.startswith(MESSAGES):
        validate_anthropic_error(response.json())
    else:
        validate_openai("ErrorResponse", response.json())


def assert_still_serving(server: DaphneServer) -> None:
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    reply = httpx.post(f"{server.url}{CHAT}", json=VALID[CHAT], timeout=60)
    assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] in ("length", "stop")
    message = httpx.post(f"{server.url}{MESSAGES}", json=VALID[MESSAGES], timeout=60)
    assert message.status_code == 200 and message.json()["stop_reason"] in ("max_tokens", "end_turn")


@pytest.mark.parametrize(("path", "raw", "content_type"), HAND_PICKED, ids=range(len(HAND_PICKED)))
def test_hand_picked_bad_requests_are_4xx(
    daphne_server: DaphneServer, path: str, raw: bytes, content_type: str
) -> None:
    assert_refused(daphne_server, path, raw, content_type)


# --- generated ---------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
not_numbers = (
    st.text(max_size=10)
    | st.booleans()
    | st.lists(json_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)
)
not_strings = (
    st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.lists(json_scalars, min_size=1, max_size=3)
    | st.dictionaries(st.text(max_size=5), json_scalars, min_size=1, max_size=3)
)
not_booleans = st.integers() | st.text(max_size=10) | st.lists(json_scalars, max_size=3) | st.floats(allow_nan=False)
not_integers = not_numbers | st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda value: not value.is_integer()
)


BLOCK_TYPES = ("text", "tool_use", "tool_result", "thinking", "redacted_thinking")


def outside(low: float, high: float, integer: bool = False) -> st.SearchStrategy:
    numbers = st.integers if integer else lambda **bounds: st.floats(allow_nan=False, allow_infinity=False, **bounds)
    return numbers(max_value=low - 1 if integer else low - 1e-6) | numbers(
        min_value=high + 1 if integer else high + 1e-6
    )


# Each field shared by chat and text completions, with values that are always wrong for it.
SAMPLING_MISTAKES: dict[str, st.SearchStrategy] = {
    "model": not_strings,
    "max_tokens": not_integers | outside(1, 2**31 - 1, integer=True),
    "temperature": not_numbers | outside(0, 2),
    "top_p": not_numbers | outside(0, 1),
    "top_k": not_integers | st.integers(max_value=-1),
    "min_p": not_numbers | outside(0, 1),
    "presence_penalty": not_numbers | outside(-2, 2),
    "frequency_penalty": not_numbers | outside(-2, 2),
    "seed": not_integers | outside(-(2**63), 2**64 - 1, integer=True),
    "n": not_integers | outside(1, 128, integer=True),
    "stream": not_booleans,
    "stop": st.integers()
    | st.booleans()
    | st.lists(st.integers(), min_size=1)
    | st.lists(st.text(min_size=1), min_size=5, max_size=8)
    | st.just([""]),
    "logit_bias": not_strings.filter(lambda value: not isinstance(value, dict))
    | st.dictionaries(
        st.text(min_size=1).filter(lambda key: not key.isdigit()), st.integers(-100, 100), min_size=1, max_size=3
    )
    | st.dictionaries(st.integers(0, 100).map(str), outside(-100, 100, integer=True), min_size=1, max_size=3),
    "user": not_strings | st.text(min_size=257, max_size=300),
    "keep_alive": st.booleans()
    | st.lists(json_scalars, min_size=1, max_size=2)
    | st.text(alphabet="xyz!", min_size=1, max_size=5),
}
MISTAKES: dict[str, dict[str, st.SearchStrategy]] = {
    CHAT: {
        **SAMPLING_MISTAKES,
        "messages": not_strings.filter(lambda value: not isinstance(value, list))
        | st.just([])
        | st.lists(not_strings.filter(lambda value: not isinstance(value, dict)) | st.text(), min_size=1, max_size=3)
        | st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.text(max_size=10).filter(
                        lambda role: role not in ("system", "user", "assistant", "tool", "developer", "function")
                    ),
                    "content": st.text(max_size=10),
                }
            ),
            min_size=1,
            max_size=3,
        )
        | st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.just("user"),
                    "content": st.integers()
                    | st.booleans()
                    | st.floats(allow_nan=False)
                    | st.dictionaries(st.text(max_size=3), json_scalars, min_size=1, max_size=2),
                }
            ),
            min_size=1,
            max_size=3,
        ),
        "logprobs": not_booleans,
        "top_logprobs": not_integers | outside(0, 20, integer=True),
        "response_format": not_strings.filter(lambda value: not isinstance(value, dict))
        | st.fixed_dictionaries(
            {"type": st.text(max_size=12).filter(lambda kind: kind not in ("text", "json_object", "json_schema"))}
        ),
        "tools": not_strings.filter(lambda value: not isinstance(value, list))
        | st.lists(not_strings | st.text(), min_size=1, max_size=3),
        "tool_choice": st.integers()
        | st.booleans()
        | st.text(max_size=10).filter(lambda choice: choice not in ("none", "auto")),
    },
    COMPLETIONS: {
        **SAMPLING_MISTAKES,
        "prompt": st.integers()
        | st.booleans()
        | st.floats(allow_nan=False)
        | st.just([])
        | st.dictionaries(st.text(max_size=3), json_scalars, max_size=2)
        | st.lists(st.integers() | st.booleans() | st.none(), min_size=1, max_size=3),
        "echo": not_booleans,
        "logprobs": not_integers | outside(0, 5, integer=True),
        "suffix": not_strings,
    },
    MESSAGES: {
        "model": not_strings,
        "max_tokens": not_integers | outside(1, 2**31 - 1, integer=True),
        "temperature": not_numbers | outside(0, 1),
        "top_p": not_numbers | outside(0, 1),
        "top_k": not_integers | st.integers(max_value=-1),
        "stream": not_booleans,
        "stop_sequences": not_strings.filter(lambda value: not isinstance(value, list))
        | st.text(max_size=5)
        | st.lists(not_strings, min_size=1, max_size=3)
        | st.just([""])
        | st.lists(st.text(min_size=1), min_size=17, max_size=20),
        "messages": not_strings.filter(lambda value: not isinstance(value, list))
        | st.just([])
        | st.lists(not_strings.filter(lambda value: not isinstance(value, dict)) | st.text(), min_size=1, max_size=3)
        | st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.text(max_size=10).filter(lambda role: role not in ("user", "assistant", "system")),
                    "content": st.text(max_size=10),
                }
            ),
            min_size=1,
            max_size=3,
        )
        | st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.just("user"),
                    "content": st.integers()
                    | st.booleans()
                    | st.floats(allow_nan=False)
                    | st.dictionaries(st.text(max_size=3), json_scalars, min_size=1, max_size=2),
                }
            ),
            min_size=1,
            max_size=3,
        )
        | st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.just("user"),
                    "content": st.lists(
                        st.fixed_dictionaries(
                            {"type": st.text(max_size=12).filter(lambda kind: kind not in BLOCK_TYPES)}
                        ),
                        min_size=1,
                        max_size=3,
                    ),
                }
            ),
            min_size=1,
            max_size=2,
        ),
        "system": not_strings.filter(lambda value: not isinstance(value, list))
        | st.lists(not_strings.filter(lambda value: not isinstance(value, dict)) | st.text(), min_size=1, max_size=3),
        "tools": not_strings.filter(lambda value: not isinstance(value, list))
        | st.lists(not_strings.filter(lambda value: not isinstance(value, dict)) | st.text(), min_size=1, max_size=3),
        "tool_choice": st.text(max_size=10)
        | st.integers()
        | st.booleans()
        | st.fixed_dictionaries(
            {"type": st.text(max_size=8).filter(lambda kind: kind not in ("auto", "any", "none", "tool"))}
        ),
        "metadata": not_strings.filter(lambda value: not isinstance(value, dict))
        | st.text(max_size=5)
        | st.fixed_dictionaries({"user_id": not_strings}),
        "thinking": not_strings.filter(lambda value: not isinstance(value, dict)) | st.text(max_size=5),
        "output_config": not_strings.filter(lambda value: not isinstance(value, dict))
        | st.text(max_size=5)
        | st.fixed_dictionaries({"format": not_strings}),
    },
    EMBEDDINGS: {
        "model": not_strings,
        "input": st.integers()
        | st.booleans()
        | st.floats(allow_nan=False)
        | st.just([])
        | st.just("")
        | st.dictionaries(st.text(max_size=3), json_scalars, max_size=2)
        | st.lists(
            st.floats(allow_nan=False, allow_infinity=False).filter(lambda value: not value.is_integer())
            | st.booleans()
            | st.none(),
            min_size=1,
            max_size=3,
        )
        | st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
        "encoding_format": not_strings | st.text(max_size=8).filter(lambda kind: kind not in ("float", "base64")),
        "user": not_strings | st.text(min_size=257, max_size=300),
    },
    RESPONSES: {
        "model": not_strings,
        "input": st.integers()
        | st.booleans()
        | st.floats(allow_nan=False)
        | st.just([])
        | st.dictionaries(st.text(max_size=3), json_scalars, max_size=2)
        | st.lists(not_strings.filter(lambda value: not isinstance(value, dict)) | st.text(), min_size=1, max_size=3)
        | st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.text(max_size=10).filter(
                        lambda role: role not in ("system", "user", "assistant", "developer")
                    ),
                    "content": st.text(max_size=10),
                }
            ),
            min_size=1,
            max_size=3,
        )
        | st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.text(max_size=12).filter(
                        lambda kind: kind not in ("message", "function_call", "function_call_output", "reasoning")
                    ),
                    "role": st.just("user"),
                    "content": st.just("Hi"),
                }
            ),
            min_size=1,
            max_size=3,
        )
        | st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.just("user"),
                    "content": st.integers()
                    | st.booleans()
                    | st.dictionaries(st.text(max_size=3), json_scalars, min_size=1, max_size=2),
                }
            ),
            min_size=1,
            max_size=3,
        ),
        "instructions": not_strings,
        "max_output_tokens": not_integers | outside(1, 2**31 - 1, integer=True),
        "temperature": not_numbers | outside(0, 2),
        "top_p": not_numbers | outside(0, 1),
        "stream": not_booleans,
        "store": not_booleans,
        "previous_response_id": not_strings | st.text(min_size=1, max_size=20),  # any id: none is stored
        "tools": not_strings.filter(lambda value: not isinstance(value, list))
        | st.lists(not_strings.filter(lambda value: not isinstance(value, dict)) | st.text(), min_size=1, max_size=3),
        "tool_choice": st.integers()
        | st.booleans()
        | st.text(max_size=10).filter(lambda choice: choice not in ("none", "auto")),
        "text": not_strings.filter(lambda value: not isinstance(value, dict))
        | st.fixed_dictionaries(
            {
                "format": st.fixed_dictionaries(
                    {
                        "type": st.text(max_size=12).filter(
                            lambda kind: kind not in ("text", "json_object", "json_schema")
                        )
                    }
                )
            }
        ),
        "metadata": not_strings.filter(lambda value: not isinstance(value, dict))
        | st.dictionaries(st.text(max_size=5), st.integers() | st.booleans(), min_size=1, max_size=3),
        "include": st.integers()
        | st.booleans()
        | st.text(min_size=1, max_size=5)
        | st.lists(st.integers(), min_size=1, max_size=2),
        "truncation": not_strings | st.text(max_size=8).filter(lambda kind: kind not in ("auto", "disabled")),
        "user": not_strings | st.text(min_size=257, max_size=300),
    },
}


@st.composite
def bad_bodies(draw: st.DrawFn, path: str) -> bytes:
    """A valid body with one field made wrong, a required field dropped, or no object at all."""
    kind = draw(st.sampled_from(["field", "field", "field", "missing", "not an object", "bytes"]))
    if kind == "field":
        field = draw(st.sampled_from(sorted(MISTAKES[path])))
        return json.dumps({**VALID[path], field: draw(MISTAKES[path][field])}).encode()
    if kind == "missing":
        required = {
            CHAT: "messages",
            COMPLETIONS: "prompt",
            EMBEDDINGS: "input",
            RESPONSES: "input",
            MESSAGES: "messages",
        }[path]
        return json.dumps({key: value for key, value in VALID[path].items() if key != required}).encode()
    if kind == "not an object":
        return json.dumps(draw(json_values.filter(lambda value: not isinstance(value, dict)))).encode()
    return draw(st.binary(max_size=64).filter(lambda raw: not raw.strip().startswith(b"{")))


GENERATED = settings(
    max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("path", list(VALID))
def test_generated_bad_requests_are_4xx(daphne_server: DaphneServer, path: str) -> None:
    @GENERATED
    @given(raw=bad_bodies(path))
    def refused(raw: bytes) -> None:
        assert_refused(daphne_server, path, raw, JSON_TYPE)

    refused()


def test_the_server_answers_normally_after_the_bad_requests(daphne_server: DaphneServer) -> None:
    assert_still_serving(daphne_server)
    assert "Traceback" not in daphne_server.log()
