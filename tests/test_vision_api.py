"""Images served end to end, in each API's own shape, streaming and not, with the real model and
the tiny random-weight projector beside it: image tokens count as prompt tokens in usage and the
record, which also keeps how many images there were; a follow-up about the same picture finds it
cached; an image llama.cpp cannot read, or a projector that does not fit, is a clear error and
the server serves on."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from inference.models import RequestRecord
from inference.runtime.pool import model_pool
from tests.conftest import SMOLLM2
from tests.gguf_files import write_projector
from tests.test_image_inputs import anthropic_error, openai_error, post
from tests.test_vision_runtime import IMAGE_TOKENS, png

pytestmark = pytest.mark.slow


@pytest.fixture
def seeing(use_config, models_dir: Path) -> Path:
    """SmolLM2 with the tiny projector beside it."""
    write_projector(models_dir / f"mmproj-{SMOLLM2}.gguf")
    use_config()
    return models_dir


def url_of(raw: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(raw).decode()}"


def chat(*images: bytes, text: str = "What is this?", **fields: Any) -> dict[str, Any]:
    parts = [{"type": "text", "text": text}] + [
        {"type": "image_url", "image_url": {"url": url_of(raw)}} for raw in images
    ]
    return {"max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": parts}], **fields}


async def events(response: Any) -> list[dict[str, Any]]:
    body = b"".join([part async for part in response.streaming_content])
    lines = body.decode().splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


async def test_chat_completions_count_each_images_tokens_and_the_record_keeps_the_images(seeing: Path) -> None:
    text_only = (await post("/v1/chat/completions", chat(text="What is this?\n"))).json()
    one = await post("/v1/chat/completions", chat(png(1)))
    two = await post("/v1/chat/completions", chat(png(1), png(2)))
    assert one.status_code == two.status_code == 200, (one.content, two.content)
    base = text_only["usage"]["prompt_tokens"]
    assert one.json()["usage"]["prompt_tokens"] == base + IMAGE_TOKENS
    assert two.json()["usage"]["prompt_tokens"] == base + 2 * IMAGE_TOKENS + 1  # the "\n" between them
    assert one.json()["choices"][0]["message"]["content"]
    record = await RequestRecord.objects.aget(completion_id=two.json()["id"])
    assert (record.images, record.prompt_tokens) == (2, two.json()["usage"]["prompt_tokens"])


async def test_chat_completions_stream_with_an_image(seeing: Path) -> None:
    response = await post("/v1/chat/completions", chat(png(3), stream=True, stream_options={"include_usage": True}))
    assert response.status_code == 200
    chunks = await events(response)
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert chunks[-1]["usage"]["prompt_tokens"] > IMAGE_TOKENS


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_take_a_base64_image_block(seeing: Path, stream: bool) -> None:
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png(4)).decode()}
    content = [{"type": "image", "source": source}, {"type": "text", "text": "What is this?"}]
    body = {"max_tokens": 4, "temperature": 0, "stream": stream, "messages": [{"role": "user", "content": content}]}
    response = await post("/v1/messages", body)
    assert response.status_code == 200, response.content
    if stream:
        started = next(event for event in (await events(response)) if event["type"] == "message_start")
        assert started["message"]["usage"]["input_tokens"] > IMAGE_TOKENS
    else:
        assert response.json()["usage"]["input_tokens"] > IMAGE_TOKENS and response.json()["content"][0]["text"]
    counted = await post("/v1/messages/count_tokens", {"messages": body["messages"]})
    assert counted.json()["input_tokens"] > IMAGE_TOKENS


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_take_an_input_image(seeing: Path, stream: bool) -> None:
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": url_of(png(5))}]
    body = {
        "max_output_tokens": 16,
        "temperature": 0,
        "stream": stream,
        "input": [{"role": "user", "content": content}],
    }
    response = await post("/v1/responses", body)
    assert response.status_code == 200, response.content
    final = (await events(response))[-1]["response"] if stream else response.json()
    assert final["status"] in ("completed", "incomplete") and final["usage"]["input_tokens"] > IMAGE_TOKENS


async def test_a_follow_up_about_the_same_picture_finds_it_cached(seeing: Path) -> None:
    first = (await post("/v1/chat/completions", chat(png(6)))).json()
    answer = first["choices"][0]["message"]["content"]
    follow_up = chat(png(6))
    follow_up["messages"] += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Its colour?"}]
    second = (await post("/v1/chat/completions", follow_up)).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"]


async def test_an_image_llama_cpp_cannot_decode_is_a_400_naming_its_part_and_the_server_serves_on(seeing: Path) -> None:
    good = png(1)
    broken = good[:33] + zlib.compress(b"not pixels") + good[-12:]  # a PNG header (it passes), then garbage
    response = await post("/v1/chat/completions", chat(good, broken))
    openai_error(response, "messages[0].content[2]", "could not decode")
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(broken).decode()}
    body = {"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": source}]}]}
    anthropic_error(await post("/v1/messages", body), "messages[0].content[0]", "could not decode")
    assert (await post("/v1/chat/completions", chat(good))).status_code == 200


@pytest.mark.parametrize("problem", ["narrow", "corrupt"])
async def test_a_projector_that_cannot_load_fails_the_load_naming_both_files(
    use_config, models_dir: Path, problem: str
) -> None:
    projector = models_dir / f"mmproj-{SMOLLM2}.gguf"
    if problem == "narrow":
        write_projector(projector, projection_dim=64)  # SmolLM2's embeddings are 576 wide
    else:
        projector.write_bytes(b"GGUF" + bytes(60))
    use_config()
    response = await post("/v1/chat/completions", chat(png(1)))
    assert response.status_code in (500, 503), response.content
    message = response.json()["error"]["message"]
    assert projector.name in message and f"{SMOLLM2}.gguf" in message, message
    assert (await AsyncClient().get("/health")).status_code == 200
    again = await post("/v1/chat/completions", chat(png(1)))  # tried again, refused again: nothing stuck
    assert projector.name in again.json()["error"]["message"]


async def test_an_image_request_and_a_text_request_on_one_model_are_served_together(seeing: Path) -> None:
    """An image request that arrives while a long text answer streams is answered before that one
    ends: neither waits for the other's whole generation."""
    text = {"max_tokens": 200, "ignore_eos": True, "stream": True, "messages": [{"role": "user", "content": "Count."}]}
    streaming = await post("/v1/chat/completions", text)
    chunks = aiter(streaming.streaming_content)
    await anext(chunks)  # the text request is generating
    picture = await post("/v1/chat/completions", chat(png(7)))
    assert picture.status_code == 200 and picture.json()["usage"]["completion_tokens"] == 4
    assert model_pool().worker(SMOLLM2).status().in_flight == 1  # the text request generates on
    rest = b"".join([part async for part in chunks]).decode()
    assert '"finish_reason":"length"' in rest.replace(" ", "")


async def test_a_stored_response_with_an_image_is_continued_with_the_picture_cached(seeing: Path) -> None:
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": url_of(png(8))}]
    body = {"max_output_tokens": 16, "temperature": 0, "store": True, "input": [{"role": "user", "content": content}]}
    first = (await post("/v1/responses", body)).json()
    follow_up = {"max_output_tokens": 16, "previous_response_id": first["id"], "input": "And its colour?"}
    second = await post("/v1/responses", follow_up)
    assert second.status_code == 200, second.content
    usage = second.json()["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] >= first["usage"]["input_tokens"]
    many = [{"type": "input_image", "image_url": url_of(png(9))}] * 16  # 17 with the stored one
    too_many = await post("/v1/responses", follow_up | {"input": [{"role": "user", "content": many}]})
    assert too_many.status_code == 400 and "At most 16 images" in too_many.json()["error"]["message"]
