"""Errors a request can end with, carrying their OpenAI status, type and code.

Raised by the API layer and services (the runtime raises facts instead: `inference.runtime.errors`,
worded by `inference.protocol.errors`); `inference.protocol` turns them into the OpenAI error
envelope. Stdlib only.
"""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ApiError):
    pass


class UnknownModel(ApiError):
    status = 404
    code = "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model")


class ResponseNotFound(ApiError):
    """A stored response that does not exist, or not for this API key."""

    status = 404

    def __init__(self, response_id: str, *, param: str | None = None) -> None:
        super().__init__(f"Response with id '{response_id}' not found.", param=param)


class ContextLengthExceeded(ApiError):
    code = "context_length_exceeded"


class ModelLoadFailed(ApiError):
    status = 503
    type = "server_error"
    code = "model_load_failed"


class ModelFailed(ApiError):
    status = 503
    type = "server_error"
    code = "model_failed"


class GenerationFailed(ApiError):
    status = 500
    type = "server_error"


class ServiceUnavailable(ApiError):
    status = 503
    type = "server_error"


class InvalidApiKey(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class RetryLater(ApiError):
    """An error the client may retry: `retry_after` seconds become the Retry-After header."""

    def __init__(self, message: str, *, retry_after: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = max(1, retry_after)


class QueueFull(RetryLater):
    status = 503
    type = "server_error"
    code = "queue_full"


class ModelTooLarge(ApiError):
    status = 503
    type = "server_error"
    code = "model_too_large"


class DatabaseUnavailable(RetryLater):
    status = 503
    type = "server_error"
    code = "database_unavailable"


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"


class PullFailed(ApiError):
    """A pull that started and failed (the download, the file, its checksum): Ollama's 500."""

    status = 500
    type = "server_error"
