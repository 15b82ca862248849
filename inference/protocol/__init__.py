"""Request and response shapes (OpenAI's, Anthropic's): request serializers, response builders,
errors, SSE."""

from inference.protocol.anthropic import MessagesRequest, MessagesRequestSerializer, MessageTokensRequestSerializer
from inference.protocol.anthropic_output import (
    anthropic_exception_handler,
    message_body,
    message_events,
    token_count_body,
)
from inference.protocol.chat import (
    ChatCompletionRequestSerializer,
    ChatRequest,
    chat_completion_body,
    chat_completion_chunks,
)
from inference.protocol.common import (
    AdminModelSerializer,
    FirstRendererNegotiation,
    JSONBodyParser,
    model_list_body,
    model_object,
)
from inference.protocol.completions import (
    CompletionRequest,
    CompletionRequestSerializer,
    completion_body,
    completion_chunks,
)
from inference.protocol.embeddings import EmbeddingRequest, EmbeddingRequestSerializer, embedding_body
from inference.protocol.errors import api_error, error_details, error_json_response, openai_exception_handler
from inference.protocol.sse import sse_response

__all__ = [
    "AdminModelSerializer",
    "MessageTokensRequestSerializer",
    "MessagesRequest",
    "MessagesRequestSerializer",
    "anthropic_exception_handler",
    "message_body",
    "message_events",
    "token_count_body",
    "ChatCompletionRequestSerializer",
    "ChatRequest",
    "CompletionRequest",
    "CompletionRequestSerializer",
    "EmbeddingRequest",
    "EmbeddingRequestSerializer",
    "FirstRendererNegotiation",
    "JSONBodyParser",
    "api_error",
    "chat_completion_body",
    "chat_completion_chunks",
    "completion_body",
    "completion_chunks",
    "embedding_body",
    "error_details",
    "error_json_response",
    "model_list_body",
    "model_object",
    "openai_exception_handler",
    "sse_response",
]
