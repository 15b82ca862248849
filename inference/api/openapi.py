"""This server's own OpenAPI description (drf-spectacular, served at /openapi.json).

Requests are described from the DRF serializers that validate them; responses and errors with
OpenAI's own schemas (bundled from the public OpenAI description, MIT), which the test suite
checks our responses against.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_BUNDLE = Path(__file__).parent / "openapi_data" / "schemas.json"


@cache
def openai_components() -> dict[str, Any]:
    """OpenAI's schemas as OpenAPI 3.1 components (their $refs pointed at components)."""
    text = _BUNDLE.read_text().replace('"#/$defs/', '"#/components/schemas/')
    return json.loads(text)["$defs"]


def openai_schema(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def error_responses(*statuses: int) -> dict[int, dict[str, str]]:
    return {status: openai_schema("ErrorResponse") for status in statuses}


def append_components(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add OpenAI's component schemas (ours win a clash)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in openai_components().items():
        schemas.setdefault(name, schema)
    return result


def names_schema(*keys: str) -> dict[str, Any]:
    """An object of name lists (`{"unloaded": [...], "pending": [...]}`)."""
    return {"type": "object", "properties": {key: {"type": "array", "items": {"type": "string"}} for key in keys}}


# OpenAI's model object, with what a request to the model may hold (our addition).
MODEL_SCHEMA = {
    "allOf": [
        openai_schema("Model"),
        {
            "type": "object",
            "properties": {
                "input_modalities": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["text", "image"]},
                    "description": 'What its requests may hold: ["text"], or ["text", "image"] for a model with '
                    "a multimodal projector (mmproj)",
                }
            },
            "required": ["input_modalities"],
        },
    ]
}
MODEL_LIST_SCHEMA = {
    "type": "object",
    "properties": {"object": {"type": "string", "enum": ["list"]}, "data": {"type": "array", "items": MODEL_SCHEMA}},
    "required": ["object", "data"],
}

HEALTH_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "loaded_models": {"type": "array", "items": {"type": "string"}},
        "uptime": {"type": "number"},
        "models": {"type": "object", "additionalProperties": {"type": "object"}},
    },
    "required": ["status", "loaded_models", "uptime", "models"],
}

APPLY_TEMPLATE_SCHEMA = {
    "type": "object",
    "properties": {"prompt": {"type": "string", "description": "The rendered prompt, generation prompt included"}},
    "required": ["prompt"],
}

# What a request without output used: its prompt's tokens.
PROMPT_USAGE_SCHEMA = {
    "type": "object",
    "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
    "required": ["prompt_tokens", "total_tokens"],
}

EMBEDDINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "model": {"type": "string"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "object": {"type": "string", "enum": ["embedding"]},
                    "index": {"type": "integer"},
                    "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]},
                },
                "required": ["object", "index", "embedding"],
            },
        },
        "usage": PROMPT_USAGE_SCHEMA,
    },
    "required": ["object", "model", "data", "usage"],
}

# llama.cpp server's /rerank answer (Jina's and Cohere's shape), the documents best first.
RERANK_SCHEMA = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "model": {"type": "string"},
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "relevance_score": {"type": "number"},
                    "document": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                },
                "required": ["index", "relevance_score"],
            },
        },
        "usage": PROMPT_USAGE_SCHEMA,
    },
    "required": ["object", "model", "results", "usage"],
}

MODEL_TABLE_SCHEMA = {
    "type": "object",
    "properties": {
        "models": {"type": "array", "items": {"type": "object"}},
        "memory_budget_mb": {"type": "integer"},
        "memory_loaded_mb": {"type": "integer"},
    },
    "required": ["models", "memory_budget_mb", "memory_loaded_mb"],
}
