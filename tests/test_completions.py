"""POST /v1/completions with the real models (SmolLM2 and the base model gemma-3-270m)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from inference.models import RequestRecord
from tests.conftest import link_model, validate_openai

PROMPT = "The capital of France is"


async def post(**body: Any) -> Any:
    return await AsyncClient().post("/v1/completions", body, content_type="application/json")


def validate_chunk(chunk: dict) -> None:
    """A stream chunk is a text_completion object whose finish_reason (and, with include_usage,
    usage) is null until the end, as OpenAI sends it; the published schema allows no null there."""
    if chunk.get("usage", {}) is None:
        chunk = {key: value for key, value in chunk.items() if key != "usage"}
    for choice in chunk["choices"]:
        if choice["finish_reason"] is None:
            choice = {**choice, "finish_reason": "stop"}
        validate_openai("CreateCompletionResponse", {**chunk, "choices": [choice]})


@pytest.fixture
def gemma(use_config, models_dir: Path, gemma_file: Path) -> str:
    link_model(gemma_file, models_dir, "gemma-base")
    return "gemma-base"


@pytest.mark.slow
async def test_a_base_model_completes_text(gemma: str) -> None:
    response = await post(model=gemma, prompt=PROMPT, max_tokens=8, temperature=0)
    body = response.json()
    assert response.status_code == 200, body
    validate_openai("CreateCompletionResponse", body)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] and body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] >= 5
    record = await RequestRecord.objects.alatest("id")
    assert (record.endpoint, record.completion_id) == ("/v1/completions", body["id"])
    assert record.completion_tokens == body["usage"]["completion_tokens"]


@pytest.mark.slow
async def test_default_max_tokens_is_sixteen(gemma: str) -> None:
    body = (await post(model=gemma, prompt=PROMPT, ignore_eos=True)).json()
    assert body["usage"]["completion_tokens"] == 16


@pytest.mark.slow
async def test_prompt_lists_n_and_echo(gemma: str) -> None:
    body = (
        await post(model=gemma, prompt=["One, two,", "Red, green,"], n=2, max_tokens=4, ignore_eos=True, echo=True)
    ).json()
    validate_openai("CreateCompletionResponse", body)
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2, 3]
    assert [choice["text"].split(",")[0] for choice in body["choices"]] == ["One", "One", "Red", "Red"]
    assert body["usage"]["completion_tokens"] == 16


@pytest.mark.slow
async def test_streaming_and_logprobs(gemma: str) -> None:
    response = await post(
        model=gemma,
        prompt=PROMPT,
        max_tokens=5,
        ignore_eos=True,
        temperature=0,
        stream=True,
        logprobs=2,
        stream_options={"include_usage": True},
    )
    raw = b"".join([part async for part in response.streaming_content]).decode()
    events = [event for event in raw.split("\n\n") if event]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    for chunk in chunks[:-1]:
        validate_chunk(chunk)
    text = "".join(choice["text"] for chunk in chunks for choice in chunk["choices"])
    tokens = [t for chunk in chunks for c in chunk["choices"] if c["logprobs"] for t in c["logprobs"]["tokens"]]
    assert "".join(tokens) == text and len(tokens) == 5
    offsets = [o for chunk in chunks for c in chunk["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    assert offsets == sorted(offsets) and offsets[0] == 0
    tops = [t for chunk in chunks for c in chunk["choices"] if c["logprobs"] for t in c["logprobs"]["top_logprobs"]]
    assert all(len(top) == 2 for top in tops)
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    plain = (await post(model=gemma, prompt=PROMPT, max_tokens=5, ignore_eos=True, temperature=0)).json()
    assert plain["choices"][0]["text"] == text


async def test_chat_models_complete_too_and_stop_sequences_apply(use_config) -> None:
    body = (await post(prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"])).json()
    assert body["choices"][0]["finish_reason"] == "stop" and " 7" not in body["choices"][0]["text"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),  # SmolLM2 has no fill-in-the-middle tokens
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"),
        ({"prompt": "hello " * 9000}, "prompt"),
    ],
)
async def test_refused_clearly(use_config, body: dict, param: str) -> None:
    response = await post(**body)
    assert response.status_code == 400, response.content
    validate_openai("ErrorResponse", response.json())
    assert response.json()["error"]["param"] == param
