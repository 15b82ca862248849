"""HTTP adapters for the APIs (OpenAI's, Anthropic's, the server's own): parse, call a service or
selector, respond."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from adrf.views import APIView as AsyncAPIView
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template.response import SimpleTemplateResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from inference import access, metrics, peers, protocol, records, selectors, services
from inference.admin_auth import AdminTokenRequired
from inference.connections import database_call
from inference.console_access import ConsoleCaller, console_caller
from inference.errors import QuotaExceeded
from inference.model_table import model_table
from inference.models import ApiKey
from inference.openapi import error_responses, openai_schema, sse_event_schema
from inference.protocol import anthropic_output
from inference.protocol.rate_limits import anthropic_rate_limit_headers, openai_rate_limit_headers
from inference.protocol.responses import InputItemsQuerySerializer, ResponseRequestSerializer
from inference.protocol.responses_output import (
    INPUT_ITEMS_SCHEMA,
    RESPONSE_DELETED_SCHEMA,
    RESPONSE_SCHEMA,
    response_body,
    response_events,
)
from inference.quotas import Quotas
from inference.runtime.errors import ModelNotFound

_STREAM = sse_event_schema("Server-sent events: `data: {chunk}` lines, then `data: [DONE]`.")
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
    """adrf's async APIView, with DRF's `initial` checks run inline and its response rendered
    inline.

    adrf runs the checks through sync_to_async, a thread hop on every request; ours (content
    negotiation, the admin token) are quick and never touch the database. Django renders a
    response with a sync `render` (DRF's Response) through sync_to_async too, unless `render` is
    a coroutine function: rendering JSON is quick, so it is done here and `render` replaced by
    an async no-op.
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
            if response.status_code == 401:
                metrics.unauthorized_count(endpoint_of(request))
        self.response = self.finalize_response(request, response, *args, **kwargs)
        if isinstance(self.response, SimpleTemplateResponse):
            self.response.render()
            self.response.render = _rendered(self.response)  # type: ignore[method-assign]
        return self.response


def _rendered(response: SimpleTemplateResponse) -> Callable[[], Awaitable[SimpleTemplateResponse]]:
    async def render() -> SimpleTemplateResponse:
        return response

    return render


class HealthView(APIView):
    @extend_schema(operation_id="health", summary="Server health and the loaded models", responses={200: _HEALTH})
    async def get(self, request: Request) -> Response:
        return Response(selectors.health())


class ModelListView(APIView):
    @extend_schema(
        operation_id="listModels", summary="The models in the models directory (that the key may use)",
        responses={200: openai_schema("ListModelsResponse"), **error_responses(401)},
    )
    async def get(self, request: Request) -> Response:
        key = await access.api_key_check(access.authorization_of(request.headers))
        body = protocol.model_list_body(selectors.model_list(allowed=key and key.allowed_models))
        if peers.forwarding(request):
            body["data"] += await peers.models_elsewhere(request, listed={model["id"] for model in body["data"]})
        return Response(body)


class ModelDetailView(APIView):
    @extend_schema(
        operation_id="retrieveModel", summary="One model",
        responses={200: openai_schema("Model"), **error_responses(401, 404)},
    )
    async def get(self, request: Request, model_id: str) -> Response | StreamingHttpResponse:
        key = await access.api_key_check(access.authorization_of(request.headers))
        try:
            name, model = selectors.model_get(model_id, allowed=key and key.allowed_models)
        except ModelNotFound:
            if peers.forwarding(request) and (answer := await peers.forward(request)) is not None:
                return answer
            raise
        return Response(protocol.model_object(model, name))


def requested_model(request: Request) -> str:
    """The model a request named, if its body was readable and named one."""
    try:
        model = request.data.get("model")
    except Exception:
        return ""
    return model if isinstance(model, str) else ""


def endpoint_of(request: HttpRequest | Request) -> str:
    """The route that answered, as `/v1/models/{model_id}`: never the path a client typed."""
    return "/" + _ROUTE_PARAMETER.sub(r"{\1}", request.resolver_match.route)


_ROUTE_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")


def request_recording(request: Request, key: ApiKey | None, console: ConsoleCaller | None = None) -> records.RequestRecording:
    """The record of an inference request, begun with what the HTTP request says of its client."""
    return records.RequestRecording(
        endpoint=endpoint_of(request),
        client_address=request.META.get("REMOTE_ADDR", ""),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:500],
        api_key=key.prefix if key else "",
        source=console.page if console else "",
        console_user=console.user if console else "",
    )


_GENERATION_ERRORS = error_responses(400, 401, 404, 413, 429, 500, 503)


class GenerationView(APIView):
    """An inference endpoint: parse the request, start it, answer with SSE chunks or JSON.

    A subclass names its request serializer, the service that starts it and the response
    builders (as static methods). Once a request passed its key's quota check, its answer —
    JSON, stream or error, the 429 too — carries the rate-limit headers of the key's quotas.
    """

    serializer: Any
    start: Any
    body: Any
    chunks: Any = None
    rate_limit_headers: Any = staticmethod(openai_rate_limit_headers)
    quotas: Quotas | None = None  # this request's, once checked

    async def post(self, request: Request) -> Response | StreamingHttpResponse:
        # A console page's staff user needs no key; 401s and 403s leave no record.
        console = await console_caller(request._request)
        key = None if console else await access.api_key_check(access.authorization_of(request.headers))
        recording = request_recording(request, key, console)
        async with recording.until_output(requested_model=lambda: requested_model(request)):
            parsed = self.serializer.parse(request.data)
            if parsed.model and peers.forwarding(request) and not selectors.model_served_here(parsed.model, key and key.allowed_models):
                if (answer := await peers.forward(request)) is not None:
                    return answer  # the peer records it
            self.quotas = await access.quota_check(key)
            recording.token_window = self.quotas.window if self.quotas else None
            generation = await self.start(request=parsed, recording=recording, key=key)
        if getattr(parsed, "stream", False):
            return protocol.sse_response(self.chunks(generation, parsed))
        return Response(await self.body(generation, parsed))

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, QuotaExceeded):
            self.quotas = exc.quotas
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.quotas is not None:
            for name, value in self.rate_limit_headers(self.quotas).items():
                response[name] = value
        return response


def _generation_schema(
    operation_id: str,
    summary: str,
    response: dict[str, Any],
    *,
    errors: dict[int, Any] = _GENERATION_ERRORS,
    stream: dict[str, Any] = _STREAM,
) -> Any:
    """Class decorator: the view's own `post`, described for the OpenAPI document from its
    serializer and whether it streams (has `chunks`).

    (drf-spectacular's extend_schema_view would wrap the inherited coroutine method in a plain
    function, and the view would stop being async.)
    """

    def describe(view: type[GenerationView]) -> type[GenerationView]:
        responses: dict[Any, Any] = {(200, "application/json"): response, **errors}
        if view.chunks is not None:
            responses[(200, "text/event-stream")] = stream

        async def post(self: GenerationView, request: Request) -> Response | StreamingHttpResponse:
            return await GenerationView.post(self, request)

        view.post = extend_schema(
            operation_id=operation_id,
            summary=summary,
            request={"application/json": view.serializer},
            responses=responses,
        )(post)
        return view

    return describe


@_generation_schema("createChatCompletion", "Create a chat completion", openai_schema("CreateChatCompletionResponse"))
class ChatCompletionsView(GenerationView):
    serializer = protocol.ChatCompletionRequestSerializer
    start = staticmethod(services.chat_completion_create)
    body = staticmethod(protocol.chat_completion_body)
    chunks = staticmethod(protocol.chat_completion_chunks)


@_generation_schema("createCompletion", "Create a text completion", openai_schema("CreateCompletionResponse"))
class CompletionsView(GenerationView):
    serializer = protocol.CompletionRequestSerializer
    start = staticmethod(services.completion_create)
    body = staticmethod(protocol.completion_body)
    chunks = staticmethod(protocol.completion_chunks)


@_generation_schema("createEmbedding", "Create embeddings", _EMBEDDINGS)
class EmbeddingsView(GenerationView):
    serializer = protocol.EmbeddingRequestSerializer
    start = staticmethod(services.embedding_create)
    body = staticmethod(protocol.embedding_body)


@_generation_schema("createResponse", "Create a model response (OpenAI Responses API)", RESPONSE_SCHEMA)
class ResponsesView(GenerationView):
    serializer = ResponseRequestSerializer
    start = staticmethod(services.response_create)
    body = staticmethod(response_body)
    chunks = staticmethod(response_events)


class ResponseDetailView(APIView):
    @extend_schema(
        operation_id="getResponse", summary="A stored response", responses={200: RESPONSE_SCHEMA, **error_responses(401, 404, 503)},
    )
    async def get(self, request: Request, response_id: str) -> Response:
        key = await access.api_key_check(access.authorization_of(request.headers))
        return Response((await services.stored_response(response_id, key=key)).body)

    @extend_schema(
        operation_id="deleteResponse", summary="Delete a stored response",
        responses={200: RESPONSE_DELETED_SCHEMA, **error_responses(401, 404, 503)},
    )
    async def delete(self, request: Request, response_id: str) -> Response:
        key = await access.api_key_check(access.authorization_of(request.headers))
        await services.response_delete(response_id=response_id, key=key)
        return Response({"id": response_id, "object": "response", "deleted": True})


class ResponseInputItemsView(APIView):
    @extend_schema(
        operation_id="listInputItems", summary="The input items of a stored response",
        parameters=[InputItemsQuerySerializer], responses={200: INPUT_ITEMS_SCHEMA, **error_responses(400, 401, 404, 503)},
    )
    async def get(self, request: Request, response_id: str) -> Response:
        key = await access.api_key_check(access.authorization_of(request.headers))
        stored = await services.stored_response(response_id, key=key)
        return Response(InputItemsQuerySerializer.page(request.query_params, stored.input_items))
class AnthropicView(GenerationView):
    """An endpoint of Anthropic's Messages API: its errors in Anthropic's envelope, its
    rate-limit headers Anthropic's too."""

    rate_limit_headers = staticmethod(anthropic_rate_limit_headers)

    def get_exception_handler(self) -> Any:
        return protocol.anthropic_exception_handler


_ANTHROPIC_ERRORS = {status: anthropic_output.ERROR_SCHEMA for status in _GENERATION_ERRORS}


@_generation_schema(
    "createMessage", "Create a message (Anthropic's Messages API)", anthropic_output.MESSAGE_SCHEMA,
    errors=_ANTHROPIC_ERRORS, stream=anthropic_output.STREAM_SCHEMA,
)
class MessagesView(AnthropicView):
    serializer = protocol.MessagesRequestSerializer
    start = staticmethod(services.message_create)
    body = staticmethod(protocol.message_body)
    chunks = staticmethod(protocol.message_events)


@_generation_schema(
    "countMessageTokens", "Count the input tokens of a message (Anthropic's Messages API)",
    anthropic_output.TOKEN_COUNT_SCHEMA, errors=_ANTHROPIC_ERRORS,
)
class MessageTokensView(AnthropicView):
    serializer = protocol.MessageTokensRequestSerializer
    start = staticmethod(services.message_tokens_count)
    body = staticmethod(protocol.token_count_body)


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


_MODEL_TABLE = {
    "type": "object",
    "properties": {
        "models": {"type": "array", "items": {"type": "object"}},
        "memory_budget_mb": {"type": "integer"},
        "memory_loaded_mb": {"type": "integer"},
    },
    "required": ["models", "memory_budget_mb", "memory_loaded_mb"],
}


class AdminModelsView(AdminView):
    @extend_schema(
        operation_id="adminModels", summary="Every model with its state, slots, queue and usage today",
        responses={200: _MODEL_TABLE, **error_responses(401, 503)},
    )
    async def get(self, request: Request) -> Response:
        table = await database_call(model_table, needed_for="the models' usage today")
        return Response(table.as_dict())


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


async def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """This process's metrics in Prometheus' text format (no key needed, like /health)."""
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return protocol.error_json_response(
        404, f"Unknown URL: {request.method} {request.path}", code="unknown_url"
    )


def server_error(request: HttpRequest) -> JsonResponse:
    return protocol.error_json_response(500, "The server had an error processing your request.")
