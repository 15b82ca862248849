"""Ollama's API under /api/: its views answer in Ollama's shapes (NDJSON streams, `{"error": "…"}`),
with the keys, quotas, records and metrics of the other APIs: chat, generate, embed and
embeddings are GenerationViews (one record each; the key as `Authorization: Bearer`), tags, show
and ps read the models as /v1/models does, pull and delete need the admin token (Ollama has no
auth; this server does). What Ollama serves and this server does not (create, copy, push, blobs)
answers 501 saying why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from operator import attrgetter
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from inference.api.authentication import Credentials
from inference.api.handler import APIView
from inference.api.views import GenerationView, _generation_schema
from inference.errors import ApiError
from inference.protocol import ollama_output as shapes
from inference.protocol.ollama import (
    OllamaChatRequestSerializer,
    OllamaDeleteRequestSerializer,
    OllamaEmbeddingsRequestSerializer,
    OllamaEmbedRequestSerializer,
    OllamaGenerateRequestSerializer,
    OllamaPullRequestSerializer,
    OllamaShowRequestSerializer,
    model_name,
)
from inference.services.models import model_delete
from inference.serving.ollama import (
    ollama_answer_body,
    ollama_answer_lines,
    ollama_embed_body,
    ollama_embedding_start,
    ollama_embeddings_body,
    ollama_generation_start,
)
from inference.serving.ollama_models import (
    ollama_ps,
    ollama_pull_body,
    ollama_pull_lines,
    ollama_pull_start,
    ollama_show,
    ollama_tags,
)


def _errors(*statuses: int) -> dict[int, Any]:
    return {status: shapes.ERROR_SCHEMA for status in statuses}


_ERRORS = _errors(400, 401, 404, 413, 429, 500, 503)


def ndjson_response(lines: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """A streamed Ollama answer: one JSON object per line, unbuffered, never cached."""
    response = StreamingHttpResponse(lines, content_type=shapes.NDJSON)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class OllamaView(APIView):
    """An Ollama endpoint: every error as `{"error": "…"}`."""

    def get_exception_handler(self) -> Any:
        return shapes.ollama_exception_handler


class OllamaGenerationView(OllamaView, GenerationView):
    """An Ollama inference endpoint: an API key (or none, unless keys are required); NDJSON streams."""

    credentials = Credentials.KEY

    def streamed(self, chunks: AsyncIterator[bytes]) -> StreamingHttpResponse:
        return ndjson_response(chunks)


def _ollama_schema(operation_id: str, summary: str, response: dict[str, Any]) -> Any:
    return _generation_schema(
        operation_id,
        summary,
        response,
        errors=_ERRORS,
        stream=shapes.STREAM_SCHEMA,
        stream_type=shapes.NDJSON,
    )


@_ollama_schema("ollamaChat", "Chat (Ollama's API; NDJSON stream unless stream is false)", shapes.CHAT_SCHEMA)
class OllamaChatView(OllamaGenerationView):
    serializer = OllamaChatRequestSerializer
    start = staticmethod(ollama_generation_start)
    body = staticmethod(ollama_answer_body)
    chunks = staticmethod(ollama_answer_lines)
    generation_of = staticmethod(attrgetter("generation"))


@_ollama_schema(
    "ollamaGenerate", "Generate (Ollama's API; NDJSON stream unless stream is false)", shapes.GENERATE_SCHEMA
)
class OllamaGenerateView(OllamaChatView):
    serializer = OllamaGenerateRequestSerializer


@_ollama_schema("ollamaEmbed", "Embeddings of texts (Ollama's API)", shapes.EMBED_SCHEMA)
class OllamaEmbedView(OllamaGenerationView):
    serializer = OllamaEmbedRequestSerializer
    start = staticmethod(ollama_embedding_start)
    body = staticmethod(ollama_embed_body)
    generation_of = staticmethod(attrgetter("generation"))


@_ollama_schema("ollamaEmbeddings", "The embedding of one prompt (Ollama's older API)", shapes.EMBEDDINGS_SCHEMA)
class OllamaEmbeddingsView(OllamaEmbedView):
    serializer = OllamaEmbeddingsRequestSerializer
    body = staticmethod(ollama_embeddings_body)


class OllamaVersionView(OllamaView):
    credentials = Credentials.NONE

    @extend_schema(
        operation_id="ollamaVersion",
        summary="The Ollama version whose API this server follows",
        responses={200: shapes.VERSION_SCHEMA},
    )
    async def get(self, request: Request) -> Response:
        return Response({"version": shapes.OLLAMA_VERSION})


class OllamaTagsView(OllamaView):
    @extend_schema(
        operation_id="ollamaTags",
        summary="The models (that the key may use), as NAME:latest",
        responses={200: shapes.TAGS_SCHEMA, **_errors(401)},
    )
    async def get(self, request: Request) -> Response:
        return Response(await ollama_tags(allowed=self.identity.allowed_models))


class OllamaPsView(OllamaView):
    @extend_schema(
        operation_id="ollamaPs",
        summary="The loaded models (that the key may use)",
        responses={200: shapes.PS_SCHEMA, **_errors(401)},
    )
    async def get(self, request: Request) -> Response:
        return Response(await ollama_ps(allowed=self.identity.allowed_models))


class OllamaShowView(OllamaView):
    @extend_schema(
        operation_id="ollamaShow",
        summary="One model: details, metadata, parameters, template, capabilities",
        request={"application/json": OllamaShowRequestSerializer},
        responses={200: shapes.SHOW_SCHEMA, **_errors(400, 401, 404, 413)},
    )
    async def post(self, request: Request) -> Response:
        named, _ = OllamaShowRequestSerializer.named(request.data)
        return Response(await ollama_show(named=named, allowed=self.identity.allowed_models))


class OllamaPullView(OllamaView):
    credentials = Credentials.ADMIN

    @extend_schema(
        operation_id="ollamaPull",
        summary="Pull a GGUF file by URL (admin token); its progress as NDJSON status lines",
        request={"application/json": OllamaPullRequestSerializer},
        responses={
            (200, "application/json"): shapes.STATUS_SCHEMA,
            (200, shapes.NDJSON): shapes.STREAM_SCHEMA,
            **_errors(400, 401, 413, 500),
        },
    )
    async def post(self, request: Request) -> Response | StreamingHttpResponse:
        pull = OllamaPullRequestSerializer.parse(request.data)
        job = ollama_pull_start(request=pull)
        if pull.stream:
            return ndjson_response(ollama_pull_lines(job, pull))
        return Response(await ollama_pull_body(job, pull))


class OllamaDeleteView(OllamaView):
    credentials = Credentials.ADMIN

    @extend_schema(
        operation_id="ollamaDelete",
        summary="Delete a model's file (admin token; the body names it, as Ollama's: {\"model\"})",
        responses={200: {"type": "object"}, **_errors(400, 401, 404, 413)},
    )
    async def delete(self, request: Request) -> Response:
        named, _ = OllamaDeleteRequestSerializer.named(request.data)
        await model_delete(model=model_name(named))
        return Response({})


class NotServed(ApiError):
    status = 501
    type = "server_error"


# Ollama's endpoints this server does not serve, and why.
NOT_SERVED = {
    "create": "models are GGUF files in the models directory: put one there, or /api/pull it by URL",
    "copy": "a model's other names are aliases in config.json (model_manager.aliases)",
    "push": "this server has no registry to push to",
    "blobs": "models are GGUF files in the models directory, not blobs",
}


class OllamaNotServedView(OllamaView):
    credentials = Credentials.NONE

    @extend_schema(exclude=True)
    async def post(self, request: Request, **_: str) -> Response:
        endpoint = request.path.removeprefix("/api/").split("/")[0]
        raise NotServed(f"/api/{endpoint} is not served by this server: {NOT_SERVED[endpoint]}.")

    head = post
