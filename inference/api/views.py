"""The API's views (OpenAI's, Anthropic's, the server's own): each parses its request, is
authenticated once (`APIView.credentials`), calls one serving function or selector, and answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from operator import attrgetter
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from inference import protocol
from inference.access.quotas import QuotaExceeded, Quotas, quota_check
from inference.api import peers
from inference.api.authentication import Credentials, Identity
from inference.api.handler import APIView, endpoint_of
from inference.api.openapi import (
    APPLY_TEMPLATE_SCHEMA,
    EMBEDDINGS_SCHEMA,
    HEALTH_SCHEMA,
    MODEL_LIST_SCHEMA,
    MODEL_SCHEMA,
    RERANK_SCHEMA,
    error_responses,
    openai_schema,
)
from inference.protocol import anthropic_output
from inference.protocol.infill import INFILL_SCHEMA, InfillRequestSerializer
from inference.protocol.rate_limits import anthropic_rate_limit_headers, openai_rate_limit_headers
from inference.protocol.rerank import RerankRequestSerializer
from inference.protocol.responses import ResponseRequestSerializer
from inference.protocol.responses_output import (
    INPUT_ITEMS_SCHEMA,
    RESPONSE_DELETED_SCHEMA,
    RESPONSE_SCHEMA,
    InputItemsQuerySerializer,
)
from inference.protocol.sse import sse_event_schema
from inference.protocol.tokens import (
    DETOKENIZE_SCHEMA,
    TOKENIZE_SCHEMA,
    DetokenizeRequestSerializer,
    TokenizeRequestSerializer,
)
from inference.records import metrics
from inference.records.recording import RequestRecording
from inference.runtime.errors import ModelNotFound
from inference.selectors import models as model_selectors
from inference.services import responses as stored_responses
from inference.serving.chat import (
    applied_template_body,
    chat_completion_body,
    chat_completion_chunks,
    chat_completion_create,
    template_apply,
)
from inference.serving.completions import completion_body, completion_chunks, completion_create
from inference.serving.embeddings import embedding_body, embedding_create
from inference.serving.generate import Caller
from inference.serving.infill import infill_body, infill_chunks
from inference.serving.messages import (
    message_body,
    message_create,
    message_events,
    message_tokens_count,
    token_count_body,
)
from inference.serving.rerank import rerank_create, reranked_body
from inference.serving.responses import response_body, response_create, response_events
from inference.serving.tokens import tokens_body, tokens_convert

_STREAM = sse_event_schema("Server-sent events: `data: {chunk}` lines, then `data: [DONE]`.")


class HealthView(APIView):
    credentials = Credentials.NONE

    @extend_schema(operation_id="health", summary="Server health and the loaded models", responses={200: HEALTH_SCHEMA})
    async def get(self, request: Request) -> Response:
        return Response(model_selectors.health())


class ModelListView(APIView):
    @extend_schema(
        operation_id="listModels",
        summary="The models in the models directory (that the key may use)",
        responses={200: MODEL_LIST_SCHEMA, **error_responses(401)},
    )
    async def get(self, request: Request) -> Response:
        body = protocol.model_list_body(model_selectors.model_list(allowed=self.identity.allowed_models))
        if peers.forwarding(request):
            body["data"] += await peers.models_elsewhere(request, listed={model["id"] for model in body["data"]})
        return Response(body)


class ModelDetailView(APIView):
    @extend_schema(
        operation_id="retrieveModel",
        summary="One model",
        responses={200: MODEL_SCHEMA, **error_responses(401, 404)},
    )
    async def get(self, request: Request, model_id: str) -> Response | StreamingHttpResponse:
        try:
            name, model = model_selectors.model_get(model_id, allowed=self.identity.allowed_models)
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


def request_recording(request: Request, identity: Identity) -> RequestRecording:
    """The record of an inference request, begun with what the HTTP request says of its client."""
    console = identity.console
    return RequestRecording(
        endpoint=endpoint_of(request),
        client_address=request.META.get("REMOTE_ADDR", ""),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:500],
        api_key=identity.api_key,
        source=console.page if console else "",
        console_user=console.user if console else "",
    )


_GENERATION_ERRORS = error_responses(400, 401, 404, 413, 429, 500, 503)


class GenerationView(APIView):
    """An inference endpoint: parse the request, start it, answer with SSE chunks or JSON; one
    record per request that passed authentication (401s and 403s leave none).

    A subclass names its request serializer, the serving function that starts it and the
    response builders (as static methods). Once a request passed its key's quota check, its
    answer — JSON, stream or error, the 429 too — carries the rate-limit headers of the key's
    quotas.
    """

    credentials = Credentials.KEY_OR_CONSOLE
    serializer: Any
    start: Any
    body: Any
    chunks: Any = None
    # The Generation in what `start` returns, for the record to track (itself, or the one a chat's
    # StartedChat or a Responses API's StartedResponse carries).
    generation_of: Any = staticmethod(lambda started: started)
    rate_limit_headers: Any = staticmethod(openai_rate_limit_headers)
    quota_checked = True  # False: the request spends none of a key's quotas, and is not refused by them
    quotas: Quotas | None = None  # this request's, once checked

    async def post(self, request: Request) -> Response | StreamingHttpResponse:
        identity = self.identity
        recording = request_recording(request, identity)
        async with recording.until_output(requested_model=lambda: requested_model(request)):
            parsed = self.serializer.parse(request.data)
            if (
                parsed.model
                and peers.forwarding(request)
                and not model_selectors.model_served_here(parsed.model, identity.allowed_models)
            ):
                if (answer := await peers.forward(request)) is not None:
                    return answer  # the peer records it
            self.quotas = await quota_check(identity.key) if self.quota_checked else None
            recording.token_window = self.quotas.window if self.quotas else None
            caller = Caller(
                api_key=identity.api_key,
                allowed_models=identity.allowed_models,
                token_allowance=recording.token_window.claim if recording.token_window else None,
            )
            started = await self.start(request=parsed, caller=caller)
            recording.track(self.generation_of(started))
        if getattr(parsed, "stream", False):
            return self.streamed(self.chunks(started, parsed))
        return Response(await self.body(started, parsed))

    def streamed(self, chunks: AsyncIterator[bytes]) -> StreamingHttpResponse:
        """A streamed answer (SSE; Ollama's views stream NDJSON)."""
        return sse_response(chunks)

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
    stream_type: str = "text/event-stream",
) -> Any:
    """Class decorator: the view's own `post`, described for the OpenAPI document from its
    serializer and whether it streams (has `chunks`).

    (drf-spectacular's extend_schema_view would wrap the inherited coroutine method in a plain
    function, and the view would stop being async.)
    """

    def describe(view: type[GenerationView]) -> type[GenerationView]:
        responses: dict[Any, Any] = {(200, "application/json"): response, **errors}
        if view.chunks is not None:
            responses[(200, stream_type)] = stream

        async def post(self: GenerationView, request: Request) -> Response | StreamingHttpResponse:
            return await GenerationView.post(self, request)

        view.post = extend_schema(  # type: ignore[method-assign]  # each view class gets its own described post
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
    start = staticmethod(chat_completion_create)
    body = staticmethod(chat_completion_body)
    chunks = staticmethod(chat_completion_chunks)
    generation_of = staticmethod(attrgetter("generation"))


@_generation_schema(
    "applyTemplate",
    "The prompt a conversation becomes with its model's chat template (llama.cpp server's)",
    APPLY_TEMPLATE_SCHEMA,
)
class ApplyTemplateView(GenerationView):
    serializer = protocol.ApplyTemplateRequestSerializer
    start = staticmethod(template_apply)
    body = staticmethod(applied_template_body)
    generation_of = staticmethod(attrgetter("generation"))


@_generation_schema("createCompletion", "Create a text completion", openai_schema("CreateCompletionResponse"))
class CompletionsView(GenerationView):
    serializer = protocol.CompletionRequestSerializer
    start = staticmethod(completion_create)
    body = staticmethod(completion_body)
    chunks = staticmethod(completion_chunks)


@_generation_schema(
    "infill",
    "Fill in the middle of code, for editors (llama.cpp server's /infill)",
    INFILL_SCHEMA,
    stream=sse_event_schema("Server-sent events: `data: {content, stop: false}` lines, then one with `stop: true`."),
)
class InfillView(GenerationView):
    serializer = InfillRequestSerializer
    start = staticmethod(completion_create)
    body = staticmethod(infill_body)
    chunks = staticmethod(infill_chunks)


@_generation_schema("createEmbedding", "Create embeddings", EMBEDDINGS_SCHEMA)
class EmbeddingsView(GenerationView):
    serializer = protocol.EmbeddingRequestSerializer
    start = staticmethod(embedding_create)
    body = staticmethod(embedding_body)


@_generation_schema(
    "rerank", "Rank documents by their relevance to a query (llama.cpp server's, Jina's and Cohere's)", RERANK_SCHEMA
)
class RerankView(GenerationView):
    serializer = RerankRequestSerializer
    start = staticmethod(rerank_create)
    body = staticmethod(reranked_body)


class RerankAliasView(RerankView):
    """/rerank and /v1/reranking: llama.cpp server's other names of /v1/rerank, described once."""

    @extend_schema(exclude=True)
    async def post(self, request: Request) -> Response | StreamingHttpResponse:
        return await GenerationView.post(self, request)


@_generation_schema("createResponse", "Create a model response (OpenAI Responses API)", RESPONSE_SCHEMA)
class ResponsesView(GenerationView):
    serializer = ResponseRequestSerializer
    start = staticmethod(response_create)
    body = staticmethod(response_body)
    chunks = staticmethod(response_events)
    generation_of = staticmethod(attrgetter("generation"))


_TOKENS_ERRORS = error_responses(400, 401, 404, 413, 500, 503)


@_generation_schema(
    "tokenize", "Text into a model's tokens (llama.cpp server's)", TOKENIZE_SCHEMA, errors=_TOKENS_ERRORS
)
class TokenizeView(GenerationView):
    """Counted as a request (its record), but free: no quota is checked or spent."""

    credentials = Credentials.KEY
    quota_checked = False
    serializer = TokenizeRequestSerializer
    start = staticmethod(tokens_convert)
    body = staticmethod(tokens_body)


@_generation_schema(
    "detokenize", "A model's tokens into text (llama.cpp server's)", DETOKENIZE_SCHEMA, errors=_TOKENS_ERRORS
)
class DetokenizeView(TokenizeView):
    serializer = DetokenizeRequestSerializer


class ResponseDetailView(APIView):
    @extend_schema(
        operation_id="getResponse",
        summary="A stored response",
        responses={200: RESPONSE_SCHEMA, **error_responses(401, 404, 503)},
    )
    async def get(self, request: Request, response_id: str) -> Response:
        return Response((await stored_responses.stored_response(response_id, api_key=self.identity.api_key)).body)

    @extend_schema(
        operation_id="deleteResponse",
        summary="Delete a stored response",
        responses={200: RESPONSE_DELETED_SCHEMA, **error_responses(401, 404, 503)},
    )
    async def delete(self, request: Request, response_id: str) -> Response:
        await stored_responses.response_delete(response_id=response_id, api_key=self.identity.api_key)
        return Response({"id": response_id, "object": "response", "deleted": True})


class ResponseInputItemsView(APIView):
    @extend_schema(
        operation_id="listInputItems",
        summary="The input items of a stored response",
        parameters=[InputItemsQuerySerializer],
        responses={200: INPUT_ITEMS_SCHEMA, **error_responses(400, 401, 404, 503)},
    )
    async def get(self, request: Request, response_id: str) -> Response:
        stored = await stored_responses.stored_response(response_id, api_key=self.identity.api_key)
        return Response(InputItemsQuerySerializer.page(request.query_params, stored.input_items))


class AnthropicView(GenerationView):
    """An endpoint of Anthropic's Messages API: its errors in Anthropic's envelope, its
    rate-limit headers Anthropic's too."""

    rate_limit_headers = staticmethod(anthropic_rate_limit_headers)

    def get_exception_handler(self) -> Any:
        return protocol.anthropic_exception_handler


_ANTHROPIC_ERRORS = {status: anthropic_output.ERROR_SCHEMA for status in _GENERATION_ERRORS}


@_generation_schema(
    "createMessage",
    "Create a message (Anthropic's Messages API)",
    anthropic_output.MESSAGE_SCHEMA,
    errors=_ANTHROPIC_ERRORS,
    stream=anthropic_output.STREAM_SCHEMA,
)
class MessagesView(AnthropicView):
    serializer = protocol.MessagesRequestSerializer
    start = staticmethod(message_create)
    body = staticmethod(message_body)
    chunks = staticmethod(message_events)
    generation_of = staticmethod(attrgetter("generation"))


@_generation_schema(
    "countMessageTokens",
    "Count the input tokens of a message (Anthropic's Messages API)",
    anthropic_output.TOKEN_COUNT_SCHEMA,
    errors=_ANTHROPIC_ERRORS,
)
class MessageTokensView(AnthropicView):
    serializer = protocol.MessageTokensRequestSerializer
    start = staticmethod(message_tokens_count)
    body = staticmethod(token_count_body)
    generation_of = staticmethod(attrgetter("generation"))


async def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """This process's metrics in Prometheus' text format (no key needed, like /health)."""
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return protocol.error_json_response(404, f"Unknown URL: {request.method} {request.path}", code="unknown_url")


def server_error(request: HttpRequest) -> JsonResponse:
    return protocol.error_json_response(500, "The server had an error processing your request.")


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """A streamed answer, as proxies must pass it on: unbuffered, never cached."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
