"""/openapi.json: this server's own OpenAPI description, accurate for requests and responses."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from django.test import AsyncClient, Client

from tests.conftest import SMOLLM2


@pytest.fixture
def document(client: Client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/")
    return response.json()


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for one schema of the document, its $refs resolved in the document."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def operation(document: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    return document["paths"][path][method]


def test_every_endpoint_is_described(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    expected = {
        "/health": "get",
        "/v1/models": "get",
        "/v1/models/{model_id}": "get",
        "/v1/chat/completions": "post",
        "/v1/completions": "post",
        "/v1/embeddings": "post",
        "/v1/rerank": "post",
        "/admin/load": "post",
        "/admin/unload": "post",
        "/admin/reload": "post",
        "/admin/reap": "post",
        "/v1/messages": "post",
        "/v1/messages/count_tokens": "post",
        "/v1/responses": "post",
        "/v1/responses/{response_id}": "delete",
        "/v1/responses/{response_id}/input_items": "get",
        "/tokenize": "post",
        "/detokenize": "post",
    }
    for path, method in expected.items():
        assert method in document["paths"][path], path
    ids = [op["operationId"] for methods in document["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in set(refs(document)):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in document["components"]["schemas"], ref


def test_requests_are_described_as_they_are_validated(document: dict[str, Any]) -> None:
    schema = operation(document, "/v1/chat/completions")["requestBody"]["content"]["application/json"]["schema"]
    check = validator(document, schema)
    check.validate({"model": SMOLLM2, "messages": [{"role": "user", "content": "Hi"}], "n": 2, "stop": "x"})
    check.validate({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    assert not check.is_valid({"messages": "Hi"})
    assert not check.is_valid({"messages": [{"role": "robot", "content": "Hi"}]})
    assert not check.is_valid({"messages": [{"role": "user", "content": "Hi"}], "temperature": 3})

    schema = operation(document, "/v1/messages")["requestBody"]["content"]["application/json"]["schema"]
    check = validator(document, schema)
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    check.validate(
        {
            "model": SMOLLM2,
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [tool_use]}],
            "tools": [
                {"name": "f", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search"},
            ],
            "tool_choice": {"type": "tool", "name": "f"},
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u"},
        }
    )
    assert not check.is_valid({"messages": [{"role": "user", "content": "Hi"}]})  # no max_tokens
    assert not check.is_valid({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]})
    assert not check.is_valid({"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], "temperature": 1.5})


@pytest.mark.slow
async def test_responses_match_their_description(use_config, document: dict[str, Any]) -> None:
    client = AsyncClient()
    cases = [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 3}),
        ("/v1/embeddings", {"input": "Hi"}),
        ("/v1/rerank", {"query": "Hi", "documents": ["Hi", "Hello"], "return_documents": True}),
        ("/v1/responses", {"input": "Hi", "max_output_tokens": 3}),
    ]
    for path, body in cases:
        response = await client.post(path, body, content_type="application/json")
        schema = operation(document, path)["responses"]["200"]["content"]["application/json"]["schema"]
        validator(document, schema).validate(response.json())
        error = await client.post(path, {"model": "nope", **body}, content_type="application/json")
        schema = operation(document, path)["responses"]["404"]["content"]["application/json"]["schema"]
        validator(document, schema).validate(error.json())
    for path, body in [
        ("/v1/messages", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
        ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "Hi"}]}),
    ]:
        response = await client.post(path, body, content_type="application/json")
        validator(
            document, operation(document, path)["responses"]["200"]["content"]["application/json"]["schema"]
        ).validate(response.json())
        error = await client.post(path, {**body, "model": "nope"}, content_type="application/json")
        schema = operation(document, path)["responses"]["404"]["content"]["application/json"]["schema"]
        validator(document, schema).validate(error.json())
        assert error.json()["error"]["type"] == "not_found_error"
    health = (await client.get("/health")).json()
    validator(
        document, operation(document, "/health", "get")["responses"]["200"]["content"]["application/json"]["schema"]
    ).validate(health)
