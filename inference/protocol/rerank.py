"""Reranking (/v1/rerank, /rerank, /v1/reranking): a query and documents in, the documents'
relevance scores out, best first, in llama.cpp server's shape (Jina's and Cohere's: `results` of
`index`, `relevance_score` and, when asked, `document: {"text"}`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol.fields import (
    KeepAliveField,
    OpenAIRequestSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    optional,
)

# Documents one request may rank, at most (as many as inputs to /v1/embeddings).
MAX_DOCUMENTS = 2048


@extend_schema_field({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_DOCUMENTS})
class DocumentsField(serializers.Field):
    """The documents to rank: a non-empty list of strings."""

    default_error_messages = {
        "invalid": "Expected a list of strings.",
        "empty": "The documents must not be empty: give at least one.",
        "too_many": f"At most {MAX_DOCUMENTS} documents per request.",
    }

    def to_internal_value(self, data: Any) -> tuple[str, ...]:
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            self.fail("invalid")
        if not data:
            self.fail("empty")
        if len(data) > MAX_DOCUMENTS:
            self.fail("too_many")
        return tuple(data)

    def to_representation(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class RerankRequest:
    model: str | None
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None  # the best this many; None: all
    return_documents: bool = False  # each result carries its document's text
    keep_alive: float | None = None


class RerankRequestSerializer(OpenAIRequestSerializer):
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    query = StrictCharField(allow_blank=True)
    documents = DocumentsField()
    top_n = optional(StrictIntegerField, min_value=1, max_value=2**31 - 1)
    return_documents = optional(StrictBooleanField)
    keep_alive = optional(KeepAliveField)

    @classmethod
    def parse(cls, data: Any) -> RerankRequest:
        values = cls.values(data)
        return RerankRequest(
            model=values.get("model") or None,
            query=values["query"],
            documents=values["documents"],
            top_n=values.get("top_n"),
            return_documents=values.get("return_documents", False),
            keep_alive=values.get("keep_alive"),
        )


def rerank_body(model: str, request: RerankRequest, scores: tuple[float, ...], prompt_tokens: int) -> dict[str, Any]:
    """The answer: the documents by score, best first (ties in the request's order), the first
    `top_n` of them."""
    order = sorted(range(len(scores)), key=lambda index: (-scores[index], index))[: request.top_n]
    results: list[dict[str, Any]] = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if request.return_documents:
            result["document"] = {"text": request.documents[index]}
        results.append(result)
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "model": model, "results": results, "usage": usage}
