"""The OpenAI error envelope, the one exception handler that answers every error with it, and
what every API's error answer shares (its fields, its headers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.settings import api_settings

from inference.errors import RetryLater
from inference.protocol.runtime_errors import api_error

# Set on every error answer (whatever its body's shape) that has a code: a peer tells an unknown
# model from any other 404 by it.
ERROR_CODE_HEADER = "X-Llamasite-Error-Code"

_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_type_for(status: int) -> str:
    return "server_error" if status >= 500 else _TYPE_BY_STATUS.get(status, "invalid_request_error")


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_json_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> JsonResponse:
    return JsonResponse(error_body(message, error_type_for(status), param, code), status=status)


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str]:
    """The first error in a DRF error tree, with the path of its field (`messages[0].role`)."""
    if isinstance(detail, Mapping):
        key, value = next(iter(detail.items()))
        if key == api_settings.NON_FIELD_ERRORS_KEY:
            return _first_validation_error(value, path)
        child = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
        return _first_validation_error(value, child)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], path)
    return path or None, str(detail)


def error_fields(exc: Exception) -> tuple[int, str, str | None, str | None, str] | None:
    """(status, message, param, code, type) for the exceptions we answer in the envelope."""
    if (known := api_error(exc)) is not None:
        return known.status, known.message, known.param, known.code, known.type
    if isinstance(exc, exceptions.ValidationError):
        param, detail = _first_validation_error(exc.detail)
        message = f"Invalid '{param}': {detail}" if param else detail
        return 400, message, param, None, "invalid_request_error"
    if isinstance(exc, exceptions.ParseError):
        return 400, f"The request body is not valid JSON: {exc.detail}", None, "invalid_json", "invalid_request_error"
    if isinstance(exc, RequestDataTooBig):
        return 413, "The request body is too large.", None, "request_too_large", "invalid_request_error"
    if isinstance(exc, exceptions.APIException):
        return exc.status_code, str(exc.detail), None, None, error_type_for(exc.status_code)
    return None


def error_details(exc: Exception) -> tuple[int, str | None, str]:
    """The HTTP status, error code and message that an exception answers with."""
    known = error_fields(exc)
    if known is None:
        return 500, None, f"{type(exc).__name__}: {exc}"
    status, message, _param, code, _type = known
    return status, code, message


def error_headers(exc: Exception, code: str | None) -> dict[str, str]:
    """The headers of an error answer: Retry-After for one worth retrying, and its code."""
    headers = {ERROR_CODE_HEADER: code} if code else {}
    if isinstance(retry := api_error(exc), RetryLater):
        headers["Retry-After"] = str(retry.retry_after)
    return headers


def openai_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF's exception handler: every error leaves as an OpenAI error envelope."""
    known = error_fields(exc)
    if known is None:
        return None  # a bug: Django's 500 handler answers (in the same envelope) and logs it
    status, message, param, code, error_type = known
    return Response(error_body(message, error_type, param, code), status=status, headers=error_headers(exc, code))
