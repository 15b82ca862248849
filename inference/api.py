"""HTTP adapters for the OpenAI API: parse, call a service or selector, respond."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from contextlib import asynccontextmanager

from adrf.views import APIView as AsyncAPIView
from drf_spectacular.utils import extend_schema
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from rest_framework.request import Request
from rest_framework.response import Response

from inference import protocol, selectors, services
from inference.admin_auth import AdminTokenRequired
from inference.openapi import error_responses, openai_schema

_STREAM = {"type": "string", "description": "Server-sent events: `data: {chunk}` lines, then `data: [DONE]`."}
_HEALTH = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "loaded_models": {"type": "array", "items": {"type": "string"}},
        "uptime": {"type": "number"},
        "models": {"type": "object", "additionalProperties": {"type": "object"}},
    },
    "required": ["status", "loaded_models", "uptime", "models"],
}
_EMBEDDINGS = {
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
        "usage": {
            "type": "object",
            "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
            "required": ["prompt_tokens", "total_tokens"],
        },
    },
    "required": ["object", "model", "data", "usage"],
}


def _names(*keys: str) -> dict[str, Any]:
    return {"type": "object", "properties": {key: {"type": "array", "items": {"type": "string"}} for key in keys}}


class APIView(AsyncAPIView):
    """adrf's async APIView, with DRF's `initial` checks run inline.

    adrf runs them through sync_to_async, a thread hop on every request; ours (content
    negotiation, the admin token) are quick and never touch the database.
    """

    async def async_dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        self.args, self.kwargs = args, kwargs
        request = self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        try:
            self.initial(request, *args, **kwargs)
            handler = getattr(self, request.method.lower(), None)
            if request.method.lower() not in self.http_method_names or handler is None:
                handler = self.http_method_not_allowed
            response = handler(request, *args, **kwargs)
            if asyncio.iscoroutine(response):
                response = await response
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response


class HealthView(APIView):
    @extend_schema(operation_id="health", summary="Server health and the loaded models", responses={200: _HEALTH})
    async def get(self, request: Request) -> Response:
        return Response(selectors.health())


class ModelListView(APIView):
    @extend_schema(operation_id="listModels", summary="The models in the models directory", responses={200: openai_schema("ListModelsResponse")})
    async def get(self, request: Request) -> Response:
        return Response(protocol.model_list_body(selectors.model_list()))


class ModelDetailView(APIView):
    @extend_schema(operation_id="retrieveModel", summary="One model", responses={200: openai_schema("Model"), **error_responses(404)})
    async def get(self, request: Request, model_id: str) -> Response:
        return Response(protocol.model_object(selectors.model_get(model_id)))


@asynccontextmanager
async def recording_failures(draft: services.RequestDraft, request: Request) -> AsyncIterator[None]:
    """Save the request's record if it fails (or the client leaves) before its output starts."""
    try:
        yield
    except asyncio.CancelledError:
        draft.fail(status="cancelled", http_status=services.CLIENT_CLOSED_REQUEST, code=None, message="")
        await asyncio.shield(services.request_record_save(draft))
        raise
    except Exception as exc:
        status, code, message = protocol.error_details(exc)
        draft.model = draft.model or requested_model(request)
        draft.fail(status="error", http_status=status, code=code, message=message)
        await services.request_record_save(draft)
        raise


def requested_model(request: Request) -> str:
    """The model a request named, if its body was readable and named one."""
    try:
        model = request.data.get("model")
    except Exception:
        return ""
    return model if isinstance(model, str) else ""


def request_draft(request: Request) -> services.RequestDraft:
    return services.RequestDraft(
        endpoint=request.path,
        client_address=request.META.get("REMOTE_ADDR", ""),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:500],
    )


_GENERATION_ERRORS = error_responses(400, 404, 413, 500, 503)


class ChatCompletionsView(APIView):
    @extend_schema(
        operation_id="createChatCompletion", summary="Create a chat completion",
        request={"application/json": protocol.ChatCompletionRequestSerializer},
        responses={
            (200, "application/json"): openai_schema("CreateChatCompletionResponse"),
            (200, "text/event-stream"): _STREAM,
            **_GENERATION_ERRORS,
        },
    )
    async def post(self, request: Request) -> Response | StreamingHttpResponse:
        draft = request_draft(request)
        async with recording_failures(draft, request):
            chat = protocol.ChatCompletionRequestSerializer.parse(request.data)
            generation = await services.chat_completion_create(request=chat, draft=draft)
        if chat.stream:
            return protocol.sse_response(protocol.chat_completion_chunks(generation, chat))
        return Response(await protocol.chat_completion_body(generation, chat))


class CompletionsView(APIView):
    @extend_schema(
        operation_id="createCompletion", summary="Create a text completion",
        request={"application/json": protocol.CompletionRequestSerializer},
        responses={
            (200, "application/json"): openai_schema("CreateCompletionResponse"),
            (200, "text/event-stream"): _STREAM,
            **_GENERATION_ERRORS,
        },
    )
    async def post(self, request: Request) -> Response | StreamingHttpResponse:
        draft = request_draft(request)
        async with recording_failures(draft, request):
            completion = protocol.CompletionRequestSerializer.parse(request.data)
            generation = await services.completion_create(request=completion, draft=draft)
        if completion.stream:
            return protocol.sse_response(protocol.completion_chunks(generation, completion))
        return Response(await protocol.completion_body(generation, completion))


class EmbeddingsView(APIView):
    @extend_schema(
        operation_id="createEmbedding", summary="Create embeddings",
        request={"application/json": protocol.EmbeddingRequestSerializer},
        responses={200: _EMBEDDINGS, **_GENERATION_ERRORS},
    )
    async def post(self, request: Request) -> Response:
        draft = request_draft(request)
        async with recording_failures(draft, request):
            embedding = protocol.EmbeddingRequestSerializer.parse(request.data)
            generation = await services.embedding_create(request=embedding, draft=draft)
        return Response(await protocol.embedding_body(generation, embedding))


class AdminView(APIView):
    permission_classes = [AdminTokenRequired]


class AdminLoadView(AdminView):
    @extend_schema(
        operation_id="adminLoad", summary="Load a model now", request={"application/json": protocol.AdminModelSerializer},
        responses={200: _names("loaded"), **error_responses(400, 401, 404, 503)},
    )
    async def post(self, request: Request) -> Response:
        model, reason = protocol.AdminModelSerializer.parse(request.data)
        return Response({"loaded": [await services.model_load(model=model, reason=reason)]})


class AdminUnloadView(AdminView):
    @extend_schema(
        operation_id="adminUnload", summary="Unload a model, or all", request={"application/json": protocol.AdminModelSerializer},
        responses={200: _names("unloaded", "pending"), **error_responses(400, 401, 404)},
    )
    async def post(self, request: Request) -> Response:
        model, reason = protocol.AdminModelSerializer.parse(request.data)
        return Response(await services.model_unload(model=model, reason=reason))


class AdminReloadView(AdminView):
    @extend_schema(
        operation_id="adminReload", summary="Re-read config.json and rediscover the models", request=None,
        responses={200: _names("added", "removed", "changed"), **error_responses(400, 401)},
    )
    async def post(self, request: Request) -> Response:
        return Response(await services.config_reload())


class AdminReapView(AdminView):
    @extend_schema(
        operation_id="adminReap", summary="Unload the idle models now", request=None,
        responses={200: _names("unloaded"), **error_responses(401)},
    )
    async def post(self, request: Request) -> Response:
        return Response(await services.models_reap())


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return protocol.error_json_response(
        404, f"Unknown URL: {request.method} {request.path}", code="unknown_url"
    )


def server_error(request: HttpRequest) -> JsonResponse:
    return protocol.error_json_response(500, "The server had an error processing your request.")
