"""Images in each API's own shape: chat `image_url` parts, Messages `image` blocks, Responses
`input_image` parts are decoded and checked (format by magic bytes, size from the header, the
limits) and carried in the conversation's turns; every refusal is a 400 in the API's shape that
names the part, and a conversation with images for a model without a projector is refused before
the model loads."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from typing import Any

import pytest
from django.test import AsyncClient

from inference.config import get_config
from inference.protocol import ChatCompletionRequestSerializer, MessagesRequestSerializer
from inference.protocol.images import MAX_IMAGES, MEDIA_MARKER, ImageRefused, image_from_bytes
from inference.protocol.responses import ResponseRequestSerializer
from inference.runtime.pool import model_pool
from tests.conftest import SMOLLM2


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + app0 + frame + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def webp(chunk: bytes, body: bytes) -> bytes:
    payload = b"WEBP" + chunk + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def bmp(width: int, height: int) -> bytes:
    return b"BM" + bytes(12) + struct.pack("<Iii", 40, width, -height) + bytes(28)


def data_url(raw: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(raw).decode()}"


PICTURE = png(3, 2)


@pytest.mark.parametrize(
    ("raw", "media_type", "size"),
    [
        (PICTURE, "image/png", (3, 2)),
        (jpeg(640, 480), "image/jpeg", (640, 480)),
        (gif(7, 5), "image/gif", (7, 5)),
        (webp(b"VP8X", bytes(4) + (99).to_bytes(3, "little") + (49).to_bytes(3, "little")), "image/webp", (100, 50)),
        (webp(b"VP8L", b"\x2f" + (9 | (4 << 14)).to_bytes(4, "little")), "image/webp", (10, 5)),
        (webp(b"VP8 ", b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", 16, 8)), "image/webp", (16, 8)),
        (bmp(4, 6), "image/bmp", (4, 6)),
    ],
)
def test_each_format_is_known_by_its_magic_bytes_and_sized_by_its_header(
    raw: bytes, media_type: str, size: tuple[int, int]
) -> None:
    image = image_from_bytes(raw)
    assert (image.media_type, (image.width, image.height)) == (media_type, size)
    assert image.sha256 == hashlib.sha256(raw).hexdigest() and image.data == raw


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"hello, world", "not PNG, JPEG, GIF, WebP or BMP"),
        (PICTURE[:16], "corrupt"),  # cut inside its header
        (png(0, 4), "corrupt"),
        (png(10_000, 10_000)[:40], "10000×10000: more than 50000000 pixels"),
        (jpeg(8, 8)[:20], "corrupt"),  # no frame header
    ],
)
def test_a_corrupt_unknown_or_huge_image_is_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(ImageRefused, match=problem):
        image_from_bytes(raw)


# --- each API's shape, parsed ------------------------------------------------------------------------


def test_chat_image_url_parts_are_carried_in_their_place(use_config) -> None:
    parts = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": data_url(PICTURE), "detail": "low"}},
        {"type": "image_url", "image_url": {"url": data_url(gif(7, 5), "image/gif")}},
    ]
    chat = ChatCompletionRequestSerializer.parse({"messages": [{"role": "user", "content": parts}]})
    (turn,) = chat.conversation
    assert turn.content == f"Compare\n{MEDIA_MARKER}\n{MEDIA_MARKER}"
    first, second = turn.images
    assert (first.width, first.height, first.sha256) == (3, 2, hashlib.sha256(PICTURE).hexdigest())
    assert (first.part, second.part, second.media_type) == (
        "messages[0].content[1]",
        "messages[0].content[2]",
        "image/gif",
    )


def test_messages_image_blocks_are_carried_in_their_place(use_config) -> None:
    source = {"type": "base64", "media_type": "image/jpeg", "data": base64.b64encode(jpeg(64, 32)).decode()}
    content = [{"type": "image", "source": source}, {"type": "text", "text": "What is it?"}]
    chat = MessagesRequestSerializer.parse({"max_tokens": 5, "messages": [{"role": "user", "content": content}]}).chat
    (turn,) = chat.conversation
    assert turn.content == f"{MEDIA_MARKER}\n\nWhat is it?"
    (image,) = turn.images
    assert (image.media_type, image.width, image.height, image.part) == ("image/jpeg", 64, 32, "messages[0].content[0]")
    by_url = [{"type": "image", "source": {"type": "url", "url": data_url(PICTURE)}}]
    chat = MessagesRequestSerializer.parse({"max_tokens": 5, "messages": [{"role": "user", "content": by_url}]}).chat
    assert chat.conversation[0].images[0].sha256 == hashlib.sha256(PICTURE).hexdigest()


def test_responses_input_image_parts_are_carried_and_kept_in_openais_shape(use_config) -> None:
    url = data_url(PICTURE)
    content = [{"type": "input_text", "text": "Describe"}, {"type": "input_image", "image_url": url, "detail": "high"}]
    request = ResponseRequestSerializer.parse({"input": [{"role": "user", "content": content}]})
    (turn,) = request.chat.conversation
    assert turn.content == f"Describe\n{MEDIA_MARKER}"
    assert (turn.images[0].width, turn.images[0].part) == (3, "input[0].content[1]")
    assert request.input[0]["content"][1] == {"type": "input_image", "image_url": url, "detail": "high"}


# --- refusals, in each API's error shape --------------------------------------------------------------


def chat_body(part: dict[str, Any]) -> dict[str, Any]:
    return {"max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, part]}]}


def chat_image(url: str) -> dict[str, Any]:
    return chat_body({"type": "image_url", "image_url": {"url": url}})


def messages_image(source: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "text", "text": "Hi"}, {"type": "image", "source": source}]
    return {"max_tokens": 1, "messages": [{"role": "user", "content": content}]}


def responses_image(url: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": "Hi"}, {"type": "input_image", "image_url": url}]
    return {"max_output_tokens": 16, "input": [{"role": "user", "content": content}]}


def png_source(raw: bytes = PICTURE, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "base64", "media_type": media_type, "data": base64.b64encode(raw).decode()}


FETCH_OFF = "server.fetch_image_urls is off"
REFUSALS = [
    ("not-base64", data_url(b"") + "%%%", png_source() | {"data": "%%%"}, "not valid base64"),
    ("unknown", data_url(b"hello, world"), png_source(b"hello, world"), "not PNG, JPEG, GIF, WebP or BMP"),
    ("corrupt", data_url(PICTURE[:20]), png_source(PICTURE[:20]), "corrupt"),
    ("http", "http://example.com/cat.png", {"type": "url", "url": "https://example.com/cat.png"}, FETCH_OFF),
    ("file", "file:///etc/passwd", {"type": "url", "url": "file:///etc/passwd"}, "not a file: URL"),
    ("not-an-image", "data:text/plain;base64,aGk=", png_source(media_type="image/gif"), "image"),
]


async def post(path: str, body: dict[str, Any]) -> Any:
    return await AsyncClient().post(path, body, content_type="application/json")


def openai_error(response: Any, part: str, problem: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == part, error
    assert part in error["message"] and problem in error["message"], error


def anthropic_error(response: Any, part: str, problem: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert part in body["error"]["message"] and problem in body["error"]["message"], body


@pytest.mark.parametrize(("url", "source", "problem"), [case[1:] for case in REFUSALS], ids=[c[0] for c in REFUSALS])
async def test_each_refusal_is_a_400_naming_the_part_in_each_apis_shape(
    use_config, url: str, source: dict[str, Any], problem: str
) -> None:
    openai_error(await post("/v1/chat/completions", chat_image(url)), "messages[0].content[1]", problem)
    anthropic_error(await post("/v1/messages", messages_image(source)), "messages[0].content[1]", problem)
    openai_error(await post("/v1/responses", responses_image(url)), "input[0].content[1]", problem)
    assert model_pool().worker(SMOLLM2) is None  # refused as it was read, before any model loads


async def test_a_bigger_image_than_max_image_bytes_is_refused(use_config) -> None:
    use_config({"max_image_bytes": 1024})
    big = PICTURE + bytes(1025 - len(PICTURE))  # one byte over: the decoded size counts
    openai_error(await post("/v1/chat/completions", chat_image(data_url(big))), "messages[0].content[1]", "1024 bytes")
    anthropic_error(await post("/v1/messages", messages_image(png_source(big))), "messages[0].content[1]", "1024")
    openai_error(await post("/v1/responses", responses_image(data_url(big))), "input[0].content[1]", "1024 bytes")


@pytest.mark.slow  # a 20 MiB image, 27 MB of JSON
async def test_an_image_of_max_image_bytes_fits_the_default_body_limit_with_text_beside_it(
    use_config, settings
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = get_config().server.max_body_bytes  # as llamasite.settings sets it
    largest = PICTURE + bytes(get_config().server.max_image_bytes - len(PICTURE))
    body = chat_image(data_url(largest))
    body["messages"].insert(0, {"role": "system", "content": "x" * (7 * 1024 * 1024)})
    response = await post("/v1/chat/completions", body)
    openai_error(response, "messages[1].content[1]", "takes text only")  # read, decoded and checked: not a 413
    body["messages"][0]["content"] += "x" * (1024 * 1024)
    assert (await post("/v1/chat/completions", body)).status_code == 413


async def test_more_images_than_a_request_may_carry_are_refused_at_the_first_too_many(use_config) -> None:
    part = {"type": "image_url", "image_url": {"url": data_url(PICTURE)}}
    messages = [{"role": "user", "content": [part, part]} for _ in range(MAX_IMAGES // 2)]
    messages.append({"role": "user", "content": [{"type": "text", "text": "and"}, part]})
    response = await post("/v1/chat/completions", {"max_tokens": 1, "messages": messages})
    openai_error(response, f"messages[{MAX_IMAGES // 2}].content[1]", f"At most {MAX_IMAGES} images")
    blocks = [{"type": "image", "source": png_source()}] * (MAX_IMAGES + 1)
    response = await post("/v1/messages", {"max_tokens": 1, "messages": [{"role": "user", "content": blocks}]})
    anthropic_error(response, f"messages[0].content[{MAX_IMAGES}]", f"At most {MAX_IMAGES} images")


async def test_an_image_outside_a_users_message_is_refused(use_config) -> None:
    part = {"type": "image_url", "image_url": {"url": data_url(PICTURE)}}
    body = {"messages": [{"role": "system", "content": [part]}, {"role": "user", "content": "Hi"}]}
    response = await post("/v1/chat/completions", body)
    openai_error(response, "messages[0].content", "Only user messages")


# --- serving: before the model loads ---------------------------------------------------------------


async def test_a_model_without_a_projector_takes_text_only_and_the_server_serves_on(use_config) -> None:
    problem = f"model {SMOLLM2} takes text only (no multimodal projector)"
    openai_error(await post("/v1/chat/completions", chat_image(data_url(PICTURE))), "messages[0].content[1]", problem)
    anthropic_error(await post("/v1/messages", messages_image(png_source())), "messages[0].content[1]", problem)
    openai_error(await post("/v1/responses", responses_image(data_url(PICTURE))), "input[0].content[1]", problem)
    assert model_pool().worker(SMOLLM2) is None
    answer = await post("/v1/chat/completions", {"max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 200, answer.content
