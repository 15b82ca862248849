"""Whatever a client sends to Ollama's routes, the answer is a 4xx in Ollama's shape
(`{"error": "…"}`), never a 5xx, and the server keeps answering: over a hundred hand-picked and
generated bodies per route, against a real daphne (pull and delete with the admin token)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SMOLLM2, DaphneServer
from tests.test_bad_input import EMBEDDINGS as OPENAI_EMBEDDINGS
from tests.test_bad_input import (
    GENERATED,
    JSON_TYPE,
    MALFORMED_BODIES,
    MODEL_MISTAKES,
    OVER_THE_BODY_LIMIT,
    json_scalars,
    json_values,
    not_booleans,
    not_integers,
    not_numbers,
    not_strings,
    outside,
)
from tests.test_bad_input import MISTAKES as OPENAI_MISTAKES

CHAT, GENERATE, EMBED, EMBEDDINGS = "/api/chat", "/api/generate", "/api/embed", "/api/embeddings"
SHOW, PULL, DELETE = "/api/show", "/api/pull", "/api/delete"
HI = [{"role": "user", "content": "Hi"}]
ONE_TOKEN = {"num_predict": 1}
# Valid bodies (one token: if a mistake were accepted after all, it costs little). Pull's and
# delete's never name a real download or an existing model: their "valid" bodies are refused too.
VALID: dict[str, dict[str, Any]] = {
    CHAT: {"model": SMOLLM2, "messages": HI, "stream": False, "options": ONE_TOKEN},
    GENERATE: {"model": SMOLLM2, "prompt": "Hi", "stream": False, "options": ONE_TOKEN},
    EMBED: {"model": SMOLLM2, "input": "Hi"},
    EMBEDDINGS: {"model": SMOLLM2, "prompt": "Hi"},
    SHOW: {"model": SMOLLM2},
    PULL: {"model": "llama3.2", "stream": False},
    DELETE: {"model": "no-such-model"},
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def body(path: str, **changes: Any) -> dict[str, Any]:
    return {**VALID[path], **changes}


def message(**fields: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Hi", **fields}]


OPTION_MISTAKES: list[Any] = [
    "hot",
    [1],
    7,
    {"temperature": "hot"},
    {"temperature": 5},
    {"top_p": 2},
    {"top_k": -1},
    {"min_p": -0.1},
    {"seed": 1.5},
    {"num_predict": "10"},
    {"num_predict": 2**40},
    {"stop": [1]},
    {"stop": [""]},
    {"stop": [f"s{i}" for i in range(17)]},
    {"num_ctx": 0},
    {"repeat_penalty": -1},
]
# What both chat and generate refuse.
SHARED_MISTAKES: list[dict[str, Any]] = [
    *({"options": options} for options in OPTION_MISTAKES),
    {"format": "yaml"},
    {"format": 5},
    {"format": ["json"]},
    {"format": {"$ref": "#/nope"}},
    {"format": {"type": "object", "not": {}}},
    {"format": {"type": "string", "multipleOf": 2}},
    {"think": "max"},
    {"think": 1},
    {"think": "true"},
    {"keep_alive": "soon"},
    {"keep_alive": True},
    {"keep_alive": []},
    {"keep_alive": "5x"},
    {"stream": "yes"},
    {"stream": 1},
    {"logprobs": "yes"},
    {"top_logprobs": 21},
    {"top_logprobs": -1},
    {"model": "no-such-model"},
    {"model": "no-such-model:latest"},
    {"model": f"{SMOLLM2}:7b"},
    {"model": None},
]
CHAT_MISTAKES: list[dict[str, Any]] = [
    *SHARED_MISTAKES,
    {"messages": "Hi"},
    {"messages": ["Hi"]},
    {"messages": {"role": "user"}},
    {"messages": [{"role": "robot", "content": "Hi"}]},
    {"messages": [{"content": "Hi"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": ["Hi"]}]},
    {"messages": message(images="abc")},
    {"messages": message(images=["!!"])},
    {"messages": message(images=[""])},
    {"messages": message(images=[5])},
    {"messages": message(images=["aGVsbG8="])},  # base64, but not an image
    {"messages": message(images=["data:text/plain;base64,aGVsbG8="])},
    {"messages": [{"role": "assistant", "content": "x", "images": ["aGVsbG8="]}]},
    {"messages": message(tool_calls=[CALL])},  # calls are the assistant's
    {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]},
    {"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
    {"messages": [{"role": "assistant", "tool_calls": [{"name": "f"}]}]},
    {"messages": [{"role": "assistant", "tool_calls": "f"}]},
    {"messages": [{"role": "tool", "content": "x", "tool_name": 5}]},
    {"messages": [{"role": "assistant", "content": "x", "thinking": 5}]},
    {"messages": HI * 2049},
    {"messages": [{"role": "user", "content": "Hi " * 5000}]},  # longer than the context
    {"tools": "get_weather"},
    {"tools": [1]},
    {"tools": [{"type": "retrieval"}]},
    {"tools": [{"type": "function", "function": {"name": "has space"}}]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
    {"tools": [{**WEATHER, "function": {"name": f"f{i}"}} for i in range(129)]},
]
GENERATE_MISTAKES: list[dict[str, Any]] = [
    *SHARED_MISTAKES,
    {"prompt": 5},
    {"prompt": ["Hi"]},
    {"prompt": {"text": "Hi"}},
    {"prompt": "Hi " * 5000},
    {"template": "{{ .Prompt }}"},
    {"template": 5},
    {"context": [1, 2, 3]},
    {"context": "1 2 3"},
    {"context": ["a"]},
    {"raw": "yes"},
    {"raw": True, "format": "json"},
    {"raw": True, "images": ["aGVsbG8="]},
    {"suffix": 5},
    {"suffix": "\n"},  # SmolLM2 cannot fill in the middle
    {"system": 5},
    {"images": "aGVsbG8="},
    {"images": ["!!"]},
    {"images": [5]},
    {"images": ["aGVsbG8="]},  # an image, for a model that takes text only, would be refused too
]
EMBED_MISTAKES: list[dict[str, Any]] = [
    {"input": 5},
    {"input": []},
    {"input": ""},
    {"input": [""]},
    {"input": [1.5]},
    {"input": [[]]},
    {"input": [-1]},
    {"input": [2**40]},
    {"input": {"text": "Hi"}},
    {"input": "Hi " * 5000},
    {"input": ["a"] * 2049},
    {"input": None},
    {"dimensions": 8},
    {"truncate": "yes"},
    {"options": 5},
    {"keep_alive": "soon"},
    {"model": "no-such-model"},
]
EMBEDDINGS_MISTAKES: list[dict[str, Any]] = [
    {"prompt": 5},
    {"prompt": ""},
    {"prompt": ["Hi"]},
    {"prompt": None},
    {"prompt": "Hi " * 5000},
    {"keep_alive": "soon"},
    {"options": "x"},
    {"model": "no-such-model"},
]
SHOW_MISTAKES: list[dict[str, Any]] = [
    {"model": "no-such-model"},
    {"model": "no-such-model:latest"},
    {"name": 5},
    {"verbose": "yes"},
]
PULL_MISTAKES: list[dict[str, Any]] = [
    {"model": "llama3.2:latest"},
    {"model": "hf.co/owner/repo:Q4_K_M"},
    {"model": "ftp://example.com/model.gguf"},
    {"model": "http://"},
    {"model": "hf://owner"},
    {"model": "hf://owner/repo/"},
    {"model": "https://example.com/"},
    {"model": "https://example.com/.hidden.gguf"},
    {"model": "https://example.com/mmproj-x.gguf"},
    {"model": "https://example.com/x-00002-of-00003.gguf"},
    {"model": f"https://example.com/{SMOLLM2}.gguf"},  # a model of that name exists
    {"model": "https://example.com/%00.gguf"},
    {"stream": "yes"},
    {"insecure": 5},
]
DELETE_MISTAKES: list[dict[str, Any]] = [
    {"model": "no-such-model:latest"},
    {"model": f"../{SMOLLM2}"},
    {"model": "all"},
    {"name": "no-such-model"},
]
HAND_PICKED_CHANGES = {
    CHAT: CHAT_MISTAKES,
    GENERATE: GENERATE_MISTAKES,
    EMBED: EMBED_MISTAKES,
    EMBEDDINGS: EMBEDDINGS_MISTAKES,
    SHOW: SHOW_MISTAKES,
    PULL: PULL_MISTAKES,
    DELETE: DELETE_MISTAKES,
}
HAND_PICKED: list[tuple[str, bytes]] = [
    *((path, raw) for path in VALID for raw in (*MALFORMED_BODIES, OVER_THE_BODY_LIMIT)),
    *((path, json.dumps(body(path, model=model)).encode()) for path in VALID for model in MODEL_MISTAKES),
    *((path, json.dumps({k: v for k, v in VALID[path].items() if k != "model"}).encode()) for path in VALID),
    *(
        (path, json.dumps(body(path, **changes)).encode())
        for path, mistakes in HAND_PICKED_CHANGES.items()
        for changes in mistakes
    ),
]


@pytest.fixture(scope="module")
def admin(daphne_server: DaphneServer) -> dict[str, str]:
    """The session server's admin token (written beside its config.json at its start)."""
    return {"Authorization": f"Bearer {(daphne_server.config.parent / '.admin_token').read_text().strip()}"}


def assert_refused(server: DaphneServer, path: str, raw: bytes, headers: dict[str, str]) -> None:
    method = "DELETE" if path == DELETE else "POST"
    response = httpx.request(
        method, f"{server.url}{path}", content=raw, headers={"Content-Type": JSON_TYPE, **headers}, timeout=60
    )
    assert 400 <= response.status_code < 500, (path, raw[:200], response.status_code, response.text[:500])
    answer = response.json()
    assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"], answer


@pytest.mark.parametrize(("path", "raw"), HAND_PICKED, ids=range(len(HAND_PICKED)))
def test_hand_picked_bad_requests_are_4xx(
    daphne_server: DaphneServer, admin: dict[str, str], path: str, raw: bytes
) -> None:
    assert_refused(daphne_server, path, raw, admin if path in (PULL, DELETE) else {})


def test_there_are_over_a_hundred_per_route_with_the_generated_ones() -> None:
    for path in VALID:
        assert sum(1 for picked, _ in HAND_PICKED if picked == path) + GENERATED.max_examples >= 100, path


# --- generated ---------------------------------------------------------------------------------

not_objects = not_strings.filter(lambda value: not isinstance(value, dict)) | st.text(max_size=5)
not_lists = not_strings.filter(lambda value: not isinstance(value, list)) | st.text(max_size=5)
# Never the name of a model the session server has (a delete would remove it).
SESSION_MODELS = {SMOLLM2, "smollm-copy", "smollm-serial"}
not_names = not_strings | st.text(max_size=12).filter(
    lambda name: name.removesuffix(":latest").removesuffix(".gguf") not in SESSION_MODELS
)
options = st.fixed_dictionaries(
    {},
    optional={
        "temperature": not_numbers | outside(0, 2),
        "top_p": not_numbers | outside(0, 1),
        "top_k": not_integers | st.integers(max_value=-1),
        "num_predict": not_integers,
        "seed": not_integers,
        "stop": st.integers() | st.lists(st.integers(), min_size=1, max_size=3) | st.just([""]),
    },
).filter(bool)
SHARED: dict[str, st.SearchStrategy] = {
    "model": not_names,
    "stream": not_booleans,
    "options": not_objects | options,
    "format": st.integers()
    | st.booleans()
    | st.lists(json_scalars, min_size=1, max_size=3)
    | st.text(max_size=8).filter(lambda value: value not in ("", "json")),
    "think": st.integers()
    | st.lists(json_scalars, min_size=1, max_size=2)
    | st.text(max_size=8).filter(lambda value: value not in ("low", "medium", "high")),
    "keep_alive": st.booleans()
    | st.lists(json_scalars, min_size=1, max_size=2)
    | st.text(alphabet="xyz!", min_size=1, max_size=5),
    "logprobs": not_booleans,
    "top_logprobs": not_integers | outside(0, 20, integer=True),
}
ROLES = ("system", "user", "assistant", "tool")


def messages_of(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """One to three messages, each of these fields."""
    return st.lists(st.fixed_dictionaries(fields), min_size=1, max_size=3)


MISTAKES: dict[str, dict[str, st.SearchStrategy]] = {
    CHAT: {
        **SHARED,
        "messages": not_lists
        | st.lists(not_objects, min_size=1, max_size=3)
        | messages_of(role=st.text(max_size=10).filter(lambda role: role not in ROLES), content=st.text(max_size=10))
        | messages_of(role=st.just("user"), content=not_strings)
        | messages_of(
            role=st.just("user"), images=not_lists | st.lists(st.text(alphabet="!?*", min_size=1), min_size=1)
        ),
        "tools": not_lists | st.lists(not_objects, min_size=1, max_size=3),
    },
    GENERATE: {
        **SHARED,
        "prompt": not_strings,
        "system": not_strings,
        "suffix": not_strings,
        "raw": not_booleans,
        "template": st.text(min_size=1, max_size=20) | not_strings,
        "context": not_lists | st.lists(st.integers(), min_size=1, max_size=5),
        "images": not_lists
        | st.lists(not_strings | st.text(alphabet="!?*", min_size=1, max_size=5), min_size=1, max_size=2),
    },
    EMBED: {
        "model": not_names,
        "input": OPENAI_MISTAKES[OPENAI_EMBEDDINGS]["input"],  # the same field as /v1/embeddings
        "truncate": not_booleans,
        "options": not_objects,
        "keep_alive": SHARED["keep_alive"],
        "dimensions": st.integers(min_value=1),
    },
    EMBEDDINGS: {
        "model": not_names,
        "prompt": not_strings | st.just(""),
        "options": not_objects,
        "keep_alive": SHARED["keep_alive"],
    },
    SHOW: {"model": not_names, "verbose": not_booleans},
    PULL: {
        "model": not_strings | st.text(max_size=30).filter(lambda value: "://" not in value),
        "stream": not_booleans,
        "insecure": not_booleans,
    },
    DELETE: {"model": not_names},
}


@st.composite
def bad_bodies(draw: st.DrawFn, path: str) -> bytes:
    """A valid body with one field made wrong, no model, or no object at all."""
    kind = draw(st.sampled_from(["field", "field", "field", "missing", "not an object", "bytes"]))
    if kind == "field":
        field = draw(st.sampled_from(sorted(MISTAKES[path])))
        return json.dumps(body(path, **{field: draw(MISTAKES[path][field])})).encode()
    if kind == "missing":
        return json.dumps({key: value for key, value in VALID[path].items() if key != "model"}).encode()
    if kind == "not an object":
        return json.dumps(draw(json_values.filter(lambda value: not isinstance(value, dict)))).encode()
    return draw(st.binary(max_size=64).filter(lambda raw: not raw.strip().startswith(b"{")))


@pytest.mark.parametrize("path", list(VALID))
def test_generated_bad_requests_are_4xx(daphne_server: DaphneServer, admin: dict[str, str], path: str) -> None:
    headers = admin if path in (PULL, DELETE) else {}

    @GENERATED
    @given(raw=bad_bodies(path))
    def refused(raw: bytes) -> None:
        assert_refused(daphne_server, path, raw, headers)

    refused()


def test_the_server_answers_normally_after_the_bad_requests(daphne_server: DaphneServer, admin: dict[str, str]) -> None:
    # The admin token was taken: pull's and delete's bodies were judged, not their credentials.
    deleted = httpx.request("DELETE", f"{daphne_server.url}{DELETE}", json=VALID[DELETE], headers=admin, timeout=10)
    assert deleted.status_code == 404
    reply = httpx.post(f"{daphne_server.url}{CHAT}", json=VALID[CHAT], timeout=60)
    assert reply.status_code == 200 and reply.json()["done"] is True
    assert httpx.get(f"{daphne_server.url}/api/tags", timeout=10).status_code == 200
    assert "Traceback" not in daphne_server.log()
