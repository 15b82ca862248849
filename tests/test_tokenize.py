"""POST /tokenize and /detokenize (llama.cpp server's shapes) on the bundled SmolLM2: a round trip
gives the text back, pieces and special tokens as llama.cpp gives them, errors in OpenAI's
envelope, and one record per request."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import AsyncClient

from inference.models import RequestRecord
from tests.conftest import SMOLLM2

TEXT = "Hello, world! Ünïcödé 🦙 and <|im_start|>"


async def post(path: str, **body: Any) -> Any:
    return await AsyncClient().post(path, body, content_type="application/json")


@pytest.mark.slow
async def test_a_round_trip_gives_the_text_back(use_config) -> None:
    tokenized = await post("/tokenize", model=SMOLLM2, content=TEXT)
    assert tokenized.status_code == 200, tokenized.content
    tokens = tokenized.json()["tokens"]
    assert all(isinstance(token, int) for token in tokens)
    assert tokens[-1] == 1, "a special token's text is that token (<|im_start|>)"
    detokenized = await post("/detokenize", model=SMOLLM2, tokens=tokens)
    assert detokenized.status_code == 200, detokenized.content
    assert detokenized.json() == {"content": TEXT}
    records = [record async for record in RequestRecord.objects.order_by("id")]
    assert [(record.endpoint, record.model, record.status) for record in records] == [
        ("/tokenize", SMOLLM2, RequestRecord.Status.OK),
        ("/detokenize", SMOLLM2, RequestRecord.Status.OK),
    ]
    assert all(record.prompt_tokens == record.completion_tokens == 0 for record in records), "free of quotas"


@pytest.mark.slow
async def test_pieces_and_the_bos(use_config) -> None:
    plain = (await post("/tokenize", content="Hi 🦙")).json()["tokens"]
    pieces = (await post("/tokenize", content="Hi 🦙", with_pieces=True)).json()["tokens"]
    assert [piece["id"] for piece in pieces] == plain
    texts = [piece["piece"] for piece in pieces]
    assert texts[0] == "Hi"
    # The llama is four bytes, split over tokens that are no UTF-8 text alone: their byte values.
    llama = [part for part in texts[1:] if isinstance(part, list)]
    assert llama and bytes(byte for part in llama for byte in part).endswith("🦙".encode())
    # SmolLM2 wants no BOS added; its <|im_start|> (the BOS) parses from text either way.
    with_special = (await post("/tokenize", content="Hi", add_special=True)).json()["tokens"]
    assert with_special == (await post("/tokenize", content="Hi")).json()["tokens"]
    assert (await post("/tokenize", content="<|im_start|>Hi", add_special=True)).json()["tokens"][0] == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": "nope", "content": "x"}, 404, "model"),
        ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model"),
        ("/detokenize", {"tokens": [1, 10**6]}, 400, "tokens"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {"tokens": "1 2"}, 400, "tokens"),
        ("/tokenize", {"content": 5}, 400, "content"),
        ("/tokenize", {}, 400, "content"),
        ("/tokenize", {"content": "x", "with_pieces": "yes"}, 400, "with_pieces"),
    ],
)
@pytest.mark.slow
async def test_errors_in_openais_envelope_each_recorded(
    use_config, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    response = await post(path, **body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    if status == 404:
        assert error["code"] == "model_not_found"
    if body.get("tokens") == [1, 10**6]:
        assert "between 0 and 49151" in error["message"]
    record = await RequestRecord.objects.aget()
    assert (record.endpoint, record.http_status) == (path, status)


@pytest.mark.slow
async def test_a_key_is_needed_where_keys_are_required(use_config) -> None:
    use_config(server={"require_api_key": True})
    response = await post("/tokenize", content="x")
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert not await RequestRecord.objects.aexists()
