"""Every error as clients read it: the runtime's failures worded (each fact becomes an ApiError
with its status, type, code, param and a message that says what to do), the OpenAI error
envelope, the one exception handler that answers every error with it, and what every API's
error answer shares (its fields, its headers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.settings import api_settings

from inference import errors
from inference.access.quotas import QuotaExceeded, seconds_to_midnight
from inference.errors import RetryLater
from inference.runtime import errors as runtime

# Set on every error answer (whatever its body's shape) that has a code: a peer tells an unknown
# model from any other 404 by it.
ERROR_CODE_HEADER = "X-Llamasite-Error-Code"


def _listed(names: list[str]) -> str:
    return ", ".join(names) or "none"


def _not_found(exc: runtime.ModelNotFound) -> errors.ApiError:
    what = (
        f"'{exc.requested}'" if exc.alias_of is None else f"'{exc.requested}' (which the alias '{exc.alias_of}' names)"
    )
    if exc.directory_missing:
        return errors.UnknownModel(
            f"The model {what} does not exist: the models directory {exc.directory} does not exist."
        )
    return errors.UnknownModel(f"The model {what} does not exist. Available models: {_listed(exc.available)}.")


def _too_long(exc: runtime.PromptTooLong) -> errors.ApiError:
    what = exc.param.split("[")[0]  # "input[3]" is one of the inputs
    which = f" ({exc.param})" if what != exc.param else ""
    return errors.ContextLengthExceeded(
        f"This model's maximum context length is {exc.n_ctx} tokens. However, your {what}{which} resulted in "
        f"{exc.tokens} tokens. Please reduce the length of the {what}.",
        param=exc.param,
    )


def _too_large(exc: runtime.ModelTooLarge) -> errors.ApiError:
    if exc.pinned_mb:
        return errors.ModelTooLarge(
            f"model {exc.model} is not loaded: it would need {exc.estimate}, which does not fit in "
            f"max_memory_mb ({exc.limit_mb}) beside the pinned models ({exc.pinned_mb} MB)"
        )
    return errors.ModelTooLarge(
        f"model {exc.model} is not loaded: it would need {exc.estimate}; max_memory_mb is {exc.limit_mb}. "
        "Lower its n_ctx or raise max_memory_mb."
    )


_WORDING: dict[type[runtime.RuntimeFailure], Callable[[Any], errors.ApiError]] = {
    runtime.NoModelGiven: lambda exc: errors.InvalidRequest(
        f"no model given and no default_model configured; available models: {_listed(exc.available)}", param="model"
    ),
    runtime.ModelNotFound: _not_found,
    runtime.TooManyChoices: lambda exc: errors.InvalidRequest(
        f"n={exc.n} is more than the {exc.parallel} requests model {exc.model} decodes together "
        "(its `parallel` setting)",
        param="n",
    ),
    runtime.TokenOutOfRange: lambda exc: errors.InvalidRequest(
        f"the token ids in '{exc.param}' must be between 0 and {exc.vocabulary_size - 1}", param=exc.param
    ),
    runtime.PromptTooLong: _too_long,
    runtime.AllowanceExceeded: lambda exc: QuotaExceeded(
        f"the API key's tokens left for today (UTC) do not cover this request's prompt ({exc.tokens} tokens)",
        retry_after=seconds_to_midnight(),
    ),
    runtime.PromptEmpty: lambda exc: errors.InvalidRequest(f"'{exc.param}' is empty", param=exc.param),
    runtime.ImageRejected: lambda exc: errors.InvalidRequest(
        f"model {exc.model} cannot take image {exc.index + 1} of the request: {exc.detail}", param="messages"
    ),
    runtime.NoChatTemplate: lambda exc: errors.InvalidRequest(
        f"model {exc.model} has no chat template; use /v1/completions for it, "
        "or set a chat_template (or chat_format) for it in config.json",
        param="model",
    ),
    runtime.TemplateRejected: lambda exc: errors.InvalidRequest(
        f"the chat template of {exc.model} failed: {exc.detail}", param="messages"
    ),
    runtime.NoFillInMiddle: lambda exc: errors.InvalidRequest(
        f"model {exc.model} cannot fill in the middle: its vocabulary has no FIM {' or '.join(exc.missing)} token "
        "(use a code model with FIM tokens, such as Qwen2.5-Coder, for /infill and 'suffix')",
        param=exc.param,
    ),
    runtime.GrammarNotCompiled: lambda exc: errors.InvalidRequest(
        "the output grammar could not be compiled", param="response_format"
    ),
    runtime.QueueFull: lambda exc: errors.QueueFull(
        f"{exc.waiting} requests are waiting for model {exc.model} already; try again shortly",
        retry_after=exc.retry_after,
    ),
    runtime.ModelTooLarge: _too_large,
    runtime.AllPinned: lambda exc: errors.ServiceUnavailable(
        f"cannot load another model: all {exc.loaded} loaded models (max_loaded_models) are pinned", param="model"
    ),
    runtime.ShuttingDown: lambda exc: errors.ServiceUnavailable("the server is shutting down"),
    runtime.LoadFailed: lambda exc: errors.ModelLoadFailed(
        f"model {exc.model} could not be loaded from {exc.file}: {exc.cause}"
    ),
    runtime.WorkerFailed: lambda exc: errors.ModelFailed(
        f"model {exc.model} failed ({exc.cause}) and was unloaded; the next request loads it again"
    ),
    runtime.PrepareFailed: lambda exc: errors.GenerationFailed(
        f"the request could not be prepared for {exc.model}: {exc.cause}"
    ),
    runtime.NotServed: lambda exc: errors.InvalidRequest(f"model {exc.model} {exc.detail}", param=exc.param),
}


def api_error(exc: Exception) -> errors.ApiError | None:
    """The ApiError an exception answers with: itself, a runtime failure worded, or None (a bug)."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, runtime.RuntimeFailure):
        return _WORDING[type(exc)](exc)
    return None


_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_type_for(status: int) -> str:
    return "server_error" if status >= 500 else _TYPE_BY_STATUS.get(status, "invalid_request_error")


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
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
