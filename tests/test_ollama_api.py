"""Ollama's API under /api/ on a real server: the models listed, shown and running as Ollama
names them, chat and generate streamed (NDJSON) and not, with Ollama's closing fields, options,
formats, thinking, images, keep_alive, embeddings, pull and delete with the admin token, errors
in Ollama's shape; each request one record, keys as `Authorization: Bearer`, quotas as 429s."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from inference.models import RequestRecord
from inference.services import keys as key_services
from tests.conftest import SMOLLM2, DaphneServer, ServerFactory, wait_for
from tests.file_server import FileServer
from tests.gguf_files import write_projector
from tests.test_vision_runtime import IMAGE_TOKENS, png

THINKER = "smollm-thinks"  # SmolLM2 under Qwen3.5's template, whose generation prompt opens <think>
SEEING = "smollm-sees"  # SmolLM2 with the tiny random projector beside it
QWEN35 = Path(__file__).parent / "data" / "templates" / "Qwen3.5-4B.jinja"
ADMIN = {"Authorization": "Bearer ollama-admin-token"}
GREEDY = {"temperature": 0}
HI = [{"role": "user", "content": "Hi"}]
DONE_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with server_factory(
        "ollama",
        names=(SMOLLM2, THINKER, SEEING),
        prepare=lambda root: write_projector(root / "models" / f"mmproj-{SEEING}.gguf"),
        env={"LLAMA_SERVER_ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer ")},
        n_ctx=2048,
        aliases={"smol": SMOLLM2},
        models={THINKER: {"chat_template": str(QWEN35)}},
    ) as running:
        yield running


def post(server: DaphneServer, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=120)


def answer(server: DaphneServer, path: str, **body: Any) -> dict[str, Any]:
    response = post(server, path, {"model": SMOLLM2, "stream": False, **body})
    assert response.status_code == 200, response.text
    return response.json()


def lines(server: DaphneServer, path: str, **body: Any) -> list[dict[str, Any]]:
    response = post(server, path, {"model": SMOLLM2, **body})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}, response.text
    return response.json()["error"]


def assert_closing(last: dict[str, Any], reasons: tuple[str, ...] = ("stop", "length")) -> None:
    assert last["done"] is True and last["done_reason"] in reasons, last
    assert all(isinstance(last[name], int) and last[name] >= 0 for name in DONE_FIELDS), last
    assert last["total_duration"] >= last["prompt_eval_duration"] + last["eval_duration"] > 0
    assert last["prompt_eval_count"] > 0


def running(server: DaphneServer) -> dict[str, dict[str, Any]]:
    return {model["name"]: model for model in httpx.get(f"{server.url}/api/ps", timeout=10).json()["models"]}


def records(server: DaphneServer, endpoint: str) -> list[tuple]:
    return server.rows(
        "SELECT model, stream, status, http_status, finish_reason, prompt_tokens, completion_tokens"
        " FROM inference_requestrecord WHERE endpoint = ? ORDER BY id",
        endpoint,
    )


# --- models ------------------------------------------------------------------------------------


def test_models_are_listed_as_name_latest_and_found_by_either_name(server: DaphneServer) -> None:
    assert httpx.get(f"{server.url}/api/version", timeout=10).json()["version"].count(".") == 2
    tags = {model["name"]: model for model in httpx.get(f"{server.url}/api/tags", timeout=10).json()["models"]}
    assert set(tags) == {f"{name}:latest" for name in (SMOLLM2, THINKER, SEEING, "smol")}
    details = tags[f"{SMOLLM2}:latest"]["details"]
    assert details["format"] == "gguf" and details["family"] == "llama" and details["quantization_level"] == "Q4_1"
    assert tags["smol:latest"]["digest"] == tags[f"{SMOLLM2}:latest"]["digest"]  # an alias is the same file
    shown = [answer(server, "/api/show", model=name) for name in (SMOLLM2, f"{SMOLLM2}:latest", "smol:latest")]
    assert shown[0] == shown[1] == shown[2]
    assert "num_ctx 2048" in shown[0]["parameters"] and shown[0]["model_info"]["llama.context_length"] == 8192
    assert shown[0]["capabilities"] == ["completion", "tools"] and "<|im_start|>" in shown[0]["template"]
    assert "thinking" in answer(server, "/api/show", model=THINKER)["capabilities"]
    assert "vision" in answer(server, "/api/show", model=SEEING)["capabilities"]
    assert "not-here" in error(post(server, "/api/show", {"model": "not-here:latest"}), 404)


# --- chat and generate -------------------------------------------------------------------------


def test_chat_streamed_is_the_answer_not_streamed(server: DaphneServer) -> None:
    body = {"messages": [{"role": "user", "content": "Name three colours."}], "options": {**GREEDY, "num_predict": 12}}
    streamed = lines(server, "/api/chat", **body)
    whole = answer(server, "/api/chat", **body)
    *pieces, last = streamed
    assert pieces and all(piece["done"] is False and piece["model"] == SMOLLM2 for piece in pieces)
    assert "".join(piece["message"]["content"] for piece in pieces) == whole["message"]["content"] != ""
    assert last["message"] == {"role": "assistant", "content": ""}
    assert_closing(last)
    assert_closing(whole)
    assert last["eval_count"] == whole["eval_count"] <= 12 and last["prompt_eval_count"] == whole["prompt_eval_count"]


def test_generate_streamed_templated_and_raw(server: DaphneServer) -> None:
    body = {"prompt": "The capital of France is", "options": {**GREEDY, "num_predict": 8}}
    *pieces, last = lines(server, "/api/generate", **body)
    whole = answer(server, "/api/generate", **body)
    assert "".join(piece["response"] for piece in pieces) == whole["response"] != ""
    assert_closing(last)
    raw = answer(server, "/api/generate", raw=True, **body)
    assert_closing(raw)
    assert raw["prompt_eval_count"] < whole["prompt_eval_count"]  # no template around it
    system = answer(server, "/api/generate", system="Answer in French.", **body)
    assert system["prompt_eval_count"] != whole["prompt_eval_count"]  # its own system prompt, not the template's


def test_options_bound_the_answer(server: DaphneServer) -> None:
    short = answer(server, "/api/chat", messages=HI, options={**GREEDY, "num_predict": 3})
    assert short["eval_count"] == 3 and short["done_reason"] == "length"
    text = answer(server, "/api/chat", messages=HI, options={**GREEDY, "num_predict": 12})["message"]["content"]
    stop = text.split()[1]
    stopped = answer(server, "/api/chat", messages=HI, options={**GREEDY, "num_predict": 12, "stop": [stop]})
    assert stopped["done_reason"] == "stop" and stopped["message"]["content"] == text[: text.index(stop)]
    sampled = {"messages": HI, "options": {"temperature": 1.0, "seed": 42, "num_predict": 10, "mirostat": 0}}
    assert answer(server, "/api/chat", **sampled)["message"] == answer(server, "/api/chat", **sampled)["message"]


def test_a_schema_format_is_followed(server: DaphneServer) -> None:
    messages = [{"role": "user", "content": "Describe a person as JSON."}]
    reply = answer(server, "/api/chat", messages=messages, format=PERSON, options={**GREEDY, "num_predict": 60})
    jsonschema.validate(json.loads(reply["message"]["content"]), PERSON)
    generated = answer(server, "/api/generate", prompt="A person:", format=PERSON, options={"num_predict": 60})
    jsonschema.validate(json.loads(generated["response"]), PERSON)
    bad = post(server, "/api/chat", {"model": SMOLLM2, "messages": HI, "format": {"type": "object", "not": {}}})
    assert "format" in error(bad, 400)


def test_think_keeps_the_thinking_apart_or_turns_it_off(server: DaphneServer) -> None:
    body = {"model": THINKER, "messages": HI, "options": {**GREEDY, "num_predict": 8}}
    thought = answer(server, "/api/chat", think=True, **body)["message"]
    assert thought["thinking"] and thought["content"] == ""  # 8 tokens: still thinking
    *pieces, _ = lines(server, "/api/chat", **body)  # no `think`: the model's own way, thinking apart
    assert "".join(piece["message"].get("thinking", "") for piece in pieces) == thought["thinking"]
    plain = answer(server, "/api/chat", think=False, **body)["message"]
    assert "thinking" not in plain and plain["content"]
    generated = answer(server, "/api/generate", model=THINKER, prompt="Hi", think="low", options={"num_predict": 4})
    assert generated["thinking"] and generated["response"] == ""


def test_images_reach_a_model_that_sees_and_are_refused_by_one_that_does_not(server: DaphneServer) -> None:
    image = base64.b64encode(png(1)).decode()
    text = {"messages": [{"role": "user", "content": "What is this?"}], "options": {**GREEDY, "num_predict": 2}}
    seen = {"messages": [{"role": "user", "content": "What is this?", "images": [image]}], "options": text["options"]}
    without = answer(server, "/api/chat", model=SEEING, **text)["prompt_eval_count"]
    assert answer(server, "/api/chat", model=SEEING, **seen)["prompt_eval_count"] == without + IMAGE_TOKENS + 1
    generated = answer(
        server, "/api/generate", model=SEEING, prompt="What is this?", images=[image], options=text["options"]
    )
    assert generated["prompt_eval_count"] > IMAGE_TOKENS
    refused = error(post(server, "/api/chat", {"model": SMOLLM2, **seen}), 400)
    assert "takes text only" in refused and "messages[0].images[0]" in refused
    assert "images[0]" in error(post(server, "/api/generate", {"model": SEEING, "prompt": "x", "images": ["!"]}), 400)


def test_a_tool_call_round_trip_is_read_in_ollamas_shape(server: DaphneServer) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "21 C, sunny", "tool_name": "get_weather"},
    ]
    reply = answer(server, "/api/chat", messages=messages, tools=[weather], options={**GREEDY, "num_predict": 16})
    assert reply["message"]["content"] and reply["prompt_eval_count"] > 50
    wrong = [{**messages[1], "tool_calls": [{"function": {"name": "get_weather", "arguments": "{}"}}]}]
    assert "arguments" in error(post(server, "/api/chat", {"model": SMOLLM2, "messages": wrong}), 400)


# --- keep_alive --------------------------------------------------------------------------------


def test_keep_alive_loads_keeps_and_unloads(server: DaphneServer) -> None:
    loaded = answer(server, "/api/generate", keep_alive="10m")
    assert loaded["done_reason"] == "load" and loaded["response"] == ""
    assert f"{SMOLLM2}:latest" in running(server)
    assert answer(server, "/api/chat", keep_alive=-1)["done_reason"] == "load"
    assert running(server)[f"{SMOLLM2}:latest"]["expires_at"].startswith("9999")
    unloaded = answer(server, "/api/generate", keep_alive=0)
    assert unloaded["done_reason"] == "unload" and f"{SMOLLM2}:latest" not in running(server)
    assert answer(server, "/api/generate", keep_alive=0)["done_reason"] == "unload"  # not loaded: nothing to do
    reply = answer(server, "/api/chat", messages=HI, keep_alive=0, options={**GREEDY, "num_predict": 2})
    assert_closing(reply)
    wait_for(lambda: f"{SMOLLM2}:latest" not in running(server))
    assert [row[4] for row in records(server, "/api/generate")][-2:] == ["unload", "unload"]


# --- embeddings --------------------------------------------------------------------------------


def test_embed_and_the_older_embeddings(server: DaphneServer) -> None:
    embedded = answer(server, "/api/embed", input=["Hello there", "Goodbye"])
    assert embedded["model"] == SMOLLM2 and len(embedded["embeddings"]) == 2
    assert all(len(vector) == 576 for vector in embedded["embeddings"])
    assert abs(sum(value * value for value in embedded["embeddings"][0]) - 1) < 1e-4
    assert embedded["prompt_eval_count"] > 2 and embedded["total_duration"] > 0
    single = answer(server, "/api/embeddings", prompt="Hello there")
    assert single["embedding"] == pytest.approx(embedded["embeddings"][0], abs=1e-5)
    assert "dimensions" in error(post(server, "/api/embed", {"model": SMOLLM2, "input": "x", "dimensions": 8}), 400)


# --- errors ------------------------------------------------------------------------------------


def test_errors_come_in_ollamas_shape(server: DaphneServer) -> None:
    assert "nope" in error(post(server, "/api/chat", {"model": "nope", "messages": HI}), 404)
    assert "nope" in error(post(server, "/api/generate", {"model": "nope:latest", "prompt": "x"}), 404)
    assert "model is required" in error(post(server, "/api/chat", {"messages": HI}), 400)
    assert "messages[0].role" in error(post(server, "/api/chat", {"model": SMOLLM2, "messages": [{"role": "x"}]}), 400)
    refused = error(post(server, "/api/generate", {"model": SMOLLM2, "prompt": "x", "template": "{{ .Prompt }}"}), 400)
    assert "'template'" in refused and "never evaluated" in refused
    assert "context" in error(post(server, "/api/generate", {"model": SMOLLM2, "prompt": "x", "context": [1, 2]}), 400)
    long = {"model": SMOLLM2, "prompt": "Hi " * 3000, "options": {"num_ctx": 32768}}
    too_long = error(post(server, "/api/generate", long), 400)
    assert "2048" in too_long and "num_ctx (32768)" in too_long and "n_ctx" in too_long
    assert "not served" in error(post(server, "/api/create", {"model": "x"}), 501)
    assert error(httpx.get(f"{server.url}/api/chat", timeout=10), 405)
    assert "Traceback" not in server.log()


def test_each_request_is_one_record_under_its_path(server: DaphneServer) -> None:
    before = {path: len(records(server, path)) for path in ("/api/chat", "/api/generate", "/api/embed")}
    lines(server, "/api/chat", messages=HI, options={"num_predict": 2})
    answer(server, "/api/generate", prompt="Hi", options={"num_predict": 2})
    answer(server, "/api/embed", input="Hi")
    post(server, "/api/chat", {"model": "nope", "messages": HI})
    chat, generate, embed = (records(server, path)[before[path] :] for path in before)
    assert [row[:4] for row in chat] == [(SMOLLM2, True, "ok", 200), ("nope", False, "error", 404)]
    assert chat[0][6] == 2 and generate[0][:4] == (SMOLLM2, False, "ok", 200) and embed[0][5] > 0


# --- pull and delete ---------------------------------------------------------------------------


def test_pull_streams_its_progress_and_delete_removes_the_file(server: DaphneServer, files: FileServer) -> None:
    url = f"{files.url}/ok/pulled-by-ollama.gguf"
    assert "admin token" in error(post(server, "/api/pull", {"model": url}), 401)
    response = post(server, "/api/pull", {"model": url}, **ADMIN)
    statuses = [json.loads(line) for line in response.text.splitlines()]
    assert statuses[0] == {"status": "pulling manifest"} and statuses[-1] == {"status": "success"}
    downloading = [status for status in statuses if status["status"] == "pulling pulled-by-ollama"]
    assert (
        downloading
        and downloading[-1]["total"] == (server.config.parent / "models" / "pulled-by-ollama.gguf").stat().st_size
    )
    assert "pulled-by-ollama:latest" in {
        model["name"] for model in httpx.get(f"{server.url}/api/tags").json()["models"]
    }
    assert "already exists" in error(post(server, "/api/pull", {"model": url, "stream": False}, **ADMIN), 400)
    assert "not a URL" in error(post(server, "/api/pull", {"model": "llama3.2"}, **ADMIN), 400)
    failed = post(server, "/api/pull", {"name": f"{files.url}/not-gguf/broken.gguf", "stream": False}, **ADMIN)
    assert "GGUF" in error(failed, 500)

    deleted = httpx.request(
        "DELETE", f"{server.url}/api/delete", json={"model": "pulled-by-ollama:latest"}, headers=ADMIN
    )
    assert deleted.status_code == 200
    assert not (server.config.parent / "models" / "pulled-by-ollama.gguf").exists()
    again = httpx.request("DELETE", f"{server.url}/api/delete", json={"name": "pulled-by-ollama"}, headers=ADMIN)
    assert "pulled-by-ollama" in error(again, 404)
    assert "alias" in error(
        httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "smol"}, headers=ADMIN), 400
    )


# --- keys and quotas (in-process) --------------------------------------------------------------


async def ollama_chat(secret: str | None = None, **body: Any) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    body = {"model": SMOLLM2, "messages": HI, "stream": False, "options": {"num_predict": 1}, **body}
    return await AsyncClient().post("/api/chat", body, content_type="application/json", headers=headers)


@pytest.mark.slow
async def test_a_required_key_comes_as_a_bearer_token_and_quotas_hold(use_config) -> None:
    use_config(server={"require_api_key": True})
    key, secret = await sync_to_async(key_services.api_key_create)(name="ollama-app", requests_per_minute=2)
    refused = await ollama_chat()
    assert refused.status_code == 401 and "API key" in refused.json()["error"]
    assert (await AsyncClient().get("/api/tags")).status_code == 401
    assert (await AsyncClient().get("/api/version")).status_code == 200  # needs no key, as /health
    assert (await ollama_chat(secret)).status_code == 200
    tags = await AsyncClient().get("/api/tags", headers={"Authorization": f"Bearer {secret}"})
    assert f"{SMOLLM2}:latest" in {model["name"] for model in tags.json()["models"]}
    assert (await ollama_chat(secret)).status_code == 200
    limited = await ollama_chat(secret)
    assert limited.status_code == 429 and set(limited.json()) == {"error"} and int(limited["Retry-After"]) > 0
    rows = [(row.endpoint, row.api_key, row.http_status) async for row in RequestRecord.objects.order_by("id")]
    assert rows == [("/api/chat", key.prefix, 200)] * 2 + [("/api/chat", key.prefix, 429)]
