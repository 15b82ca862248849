"""Bad requests and broken models get OpenAI-shaped errors, and the server keeps serving."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from tests.conftest import SMOLLM2, link_model, validate_openai
from tests.gguf_files import write_random, write_synthetic, write_truncated

HELLO = [{"role": "user", "content": "Hi"}]


async def post_raw(body: bytes | str, content_type: str = "application/json") -> Any:
    return await AsyncClient().post("/v1/chat/completions", body, content_type=content_type)


async def post_chat(**body: Any) -> Any:
    return await AsyncClient().post("/v1/chat/completions", body, content_type="application/json")


def error_of(response: Any, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    validate_openai("ErrorResponse", body)
    return body["error"]


@pytest.mark.parametrize(
    "raw",
    ['{"messages": [', "not json at all", '{"temperature": NaN, "messages": []}', ""],
)
async def test_malformed_json_is_a_400(use_config, raw: str) -> None:
    error = error_of(await post_raw(raw), 400)
    assert error["type"] == "invalid_request_error"


async def test_body_must_be_an_object(use_config) -> None:
    error = error_of(await post_raw("[1, 2]"), 400)
    assert "dictionary" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": ["Hi"]}, "messages[0]"),
        ({"messages": [{"content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": HELLO + [{"role": "user", "content": None}]}, "messages[1].content"),
        ({"messages": HELLO, "model": 7}, "model"),
        ({"messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"messages": HELLO, "temperature": 2.5}, "temperature"),
        ({"messages": HELLO, "top_p": -0.1}, "top_p"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": "10"}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 1.5}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": True}, "max_tokens"),
        ({"messages": HELLO, "max_completion_tokens": -3}, "max_completion_tokens"),
        ({"messages": HELLO, "max_tokens": 10**30}, "max_tokens"),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
        ({"messages": HELLO, "stop": [1]}, "stop"),
        ({"messages": HELLO, "stop": [""]}, "stop"),
        ({"messages": HELLO, "seed": "x"}, "seed"),
        ({"messages": HELLO, "presence_penalty": 3}, "presence_penalty"),
        ({"messages": HELLO, "n": 0}, "n"),
        ({"messages": HELLO, "n": 5}, "n"),  # more than the model's 4 parallel slots
        ({"messages": HELLO, "top_logprobs": 3}, "top_logprobs"),
        ({"messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": HELLO, "tool_choice": "required"}, "tool_choice"),
        (
            {"messages": HELLO, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        (
            {
                "messages": HELLO,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ({"messages": HELLO, "response_format": {"type": "xml"}}, "response_format"),
        (
            {
                "messages": HELLO,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {
                            "type": "object",
                            "properties": {
                                "a": {"type": "string", "format": "hostname-ish", "x-nope": {"$ref": "#/nowhere"}}
                            },
                        },
                    },
                },
            },
            "response_format",
        ),
        ({"messages": HELLO, "logit_bias": {"abc": 5}}, "logit_bias"),
        ({"messages": HELLO, "logit_bias": {"12": 500}}, "logit_bias"),
        ({"messages": HELLO, "audio": {"voice": "alloy"}}, "audio"),
        ({"messages": HELLO, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
        ({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_invalid_fields_are_a_400_naming_the_param(use_config, body: dict, param: str) -> None:
    error = error_of(await post_chat(**body), 400)
    assert error["param"] == param
    assert param in error["message"]


async def test_unused_values_of_unsupported_parameters_are_accepted(use_config) -> None:
    response = await post_chat(messages=HELLO, max_tokens=1, audio=None, modalities=["text"], functions=[])
    assert response.status_code == 200, response.content


async def test_unknown_fields_are_ignored_with_a_debug_log(use_config, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="inference.protocol.fields"):
        response = await post_chat(messages=HELLO, max_tokens=1, some_future_field={"x": 1})
    assert response.status_code == 200, response.content
    assert "some_future_field" in caplog.text


async def test_unknown_model_is_a_404_listing_the_available_ones(use_config) -> None:
    for name in ("gpt-4o", SMOLLM2.lower()):
        error = error_of(await post_chat(model=name, messages=HELLO), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert name in error["message"] and SMOLLM2 in error["message"]


@pytest.mark.slow
async def test_prompt_longer_than_the_context_is_a_400(use_config) -> None:
    long_prompt = [{"role": "user", "content": "hello " * 9000}]
    error = error_of(await post_chat(messages=long_prompt), 400)
    assert error["code"] == "context_length_exceeded"
    assert "8192 tokens" in error["message"]  # n_ctx 16384 was capped to SmolLM2's trained 8192
    streamed = error_of(await post_chat(messages=long_prompt, stream=True), 400)
    assert streamed["code"] == "context_length_exceeded"
    assert (await post_chat(messages=HELLO, max_tokens=1)).status_code == 200


@pytest.mark.parametrize("damage", ["random", "header-cut", "synthetic", "empty"])
@pytest.mark.slow
async def test_a_broken_model_file_is_a_503_and_other_models_keep_working(
    use_config, models_dir: Path, smollm2_file: Path, damage: str
) -> None:
    broken = models_dir / "broken.gguf"
    {
        "random": lambda: write_random(broken),
        "header-cut": lambda: write_truncated(smollm2_file, broken, 1000),
        "synthetic": lambda: write_synthetic(broken),
        "empty": lambda: write_truncated(smollm2_file, broken, 0),
    }[damage]()
    error = error_of(await post_chat(model="broken", messages=HELLO), 503)
    assert error["code"] == "model_load_failed" and error["type"] == "server_error"
    assert "broken.gguf" in error["message"]
    assert (await post_chat(messages=HELLO, max_tokens=1)).status_code == 200
    # The load is tried again on the next request: once the file is fixed, it works.
    os.replace(link_model(smollm2_file, models_dir, "fixed"), broken)
    assert (await post_chat(model="broken", messages=HELLO, max_tokens=1)).status_code == 200


async def test_a_model_file_short_of_its_tensor_data_is_not_listed(
    use_config, models_dir: Path, smollm2_file: Path
) -> None:
    write_truncated(smollm2_file, models_dir / "cut.gguf", 50_000_000)
    error = error_of(await post_chat(model="cut", messages=HELLO), 404)
    assert error["code"] == "model_not_found"


@pytest.mark.slow
async def test_a_model_cut_short_after_it_was_listed_fails_its_load_saying_why(
    use_config, models_dir: Path, smollm2_file: Path
) -> None:
    cut = write_truncated(smollm2_file, models_dir / "cut.gguf", smollm2_file.stat().st_size)
    listed = (await AsyncClient().get("/v1/models")).json()["data"]
    assert "cut" in [model["id"] for model in listed]
    os.truncate(cut, 50_000_000)  # in place: the directory does not change
    error = error_of(await post_chat(model="cut", messages=HELLO), 503)
    assert "cut.gguf holds 50,000,000 of the 98,362,432 bytes its GGUF header describes" in error["message"]


@pytest.mark.slow
async def test_chat_on_a_model_without_a_chat_template_is_a_400(use_config, models_dir: Path, gemma_file: Path) -> None:
    link_model(gemma_file, models_dir, "gemma-base")
    error = error_of(await post_chat(model="gemma-base", messages=HELLO), 400)
    assert "chat template" in error["message"] and "/v1/completions" in error["message"]


async def test_oversize_body_is_a_413(use_config, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024  # server.max_body_bytes, as llamasite.settings sets it
    giant = '{"messages": [{"role": "user", "content": "' + "a" * (2 * 1024 * 1024) + '"}]}'
    error = error_of(await post_raw(giant), 413)
    assert error["type"] == "invalid_request_error"


async def test_a_form_content_type_is_still_read_as_json(use_config) -> None:
    response = await post_raw(
        '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}',
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200, response.content
