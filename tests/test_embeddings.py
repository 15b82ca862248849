"""POST /v1/embeddings: an embedding context of the model, loaded and reaped like any other."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest
from django.test import AsyncClient

from inference.runtime.pool import model_pool
from tests.conftest import SMOLLM2, validate_openai


async def embed(**body: Any) -> Any:
    return await AsyncClient().post("/v1/embeddings", body, content_type="application/json")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


@pytest.mark.slow
async def test_vectors_are_stable_and_tell_texts_apart(use_config) -> None:
    response = await embed(
        input=["The cat sat on the mat.", "The cat sat on the mat.", "Quarterly tax filing deadlines"]
    )
    body = response.json()
    assert response.status_code == 200, body
    validate_openai("CreateEmbeddingResponse", body)
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert len(vectors[0]) == 576 and abs(math.sqrt(cosine(vectors[0], vectors[0])) - 1) < 1e-6
    assert vectors[0] == vectors[1]
    assert cosine(vectors[0], vectors[2]) < 0.999
    again = (await embed(input="The cat sat on the mat.")).json()["data"][0]["embedding"]
    assert again == vectors[0]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 10
    assert f"{SMOLLM2} (embeddings)" in model_pool().loaded_models()


@pytest.mark.slow
async def test_token_arrays_and_base64(use_config) -> None:
    floats = (await embed(input=[[1, 2, 3, 4]])).json()["data"][0]["embedding"]
    encoded = (await embed(input=[1, 2, 3, 4], encoding_format="base64")).json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(encoded))
    assert all(abs(x - y) < 1e-6 for x, y in zip(decoded, floats))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "dimensions": 64}, "dimensions"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [1.5]}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": [[10**9]]}, "input"),
        ({"input": "word " * 9000}, "input"),
    ],
)
async def test_refused_clearly(use_config, body: dict, param: str) -> None:
    response = await embed(**body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param
