"""Wire shapes (OpenAI's, Anthropic's): request serializers, the error envelopes and the
exception handlers that answer with them, SSE framing, and the pieces every answer shares. The
answers themselves are built by `inference.serving`."""

from inference.protocol.anthropic import MessagesRequest, MessagesRequestSerializer, MessageTokensRequestSerializer
from inference.protocol.anthropic_output import anthropic_exception_handler
from inference.protocol.chat import ApplyTemplateRequestSerializer, ChatCompletionRequestSerializer, ChatRequest
from inference.protocol.common import (
    AdminModelSerializer,
    FirstRendererNegotiation,
    JSONBodyParser,
    model_list_body,
    model_object,
)
from inference.protocol.completions import CompletionRequest, CompletionRequestSerializer
from inference.protocol.embeddings import EmbeddingRequest, EmbeddingRequestSerializer
from inference.protocol.errors import api_error, error_details, error_json_response, openai_exception_handler

__all__ = [
    "AdminModelSerializer",
    "ApplyTemplateRequestSerializer",
    "ChatCompletionRequestSerializer",
    "ChatRequest",
    "CompletionRequest",
    "CompletionRequestSerializer",
    "EmbeddingRequest",
    "EmbeddingRequestSerializer",
    "FirstRendererNegotiation",
    "JSONBodyParser",
    "MessageTokensRequestSerializer",
    "MessagesRequest",
    "MessagesRequestSerializer",
    "anthropic_exception_handler",
    "api_error",
    "error_details",
    "error_json_response",
    "model_list_body",
    "model_object",
    "openai_exception_handler",
]
