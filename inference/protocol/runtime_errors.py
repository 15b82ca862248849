"""The runtime's failures, worded for OpenAI clients: each fact becomes an ApiError with its
status, type, code, param and a message that says what to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inference import errors
from inference.quotas import seconds_to_midnight
from inference.runtime import errors as runtime


def _listed(names: list[str]) -> str:
    return ", ".join(names) or "none"


def _not_found(exc: runtime.ModelNotFound) -> errors.ApiError:
    what = f"'{exc.requested}'" if exc.alias_of is None else f"'{exc.requested}' (which the alias '{exc.alias_of}' names)"
    if exc.directory_missing:
        return errors.ModelNotFound(
            f"The model {what} does not exist: the models directory {exc.directory} does not exist."
        )
    return errors.ModelNotFound(f"The model {what} does not exist. Available models: {_listed(exc.available)}.")


def _too_long(exc: runtime.PromptTooLong) -> errors.ApiError:
    what = exc.param.split("[")[0]  # "input[3]" is one of the inputs
    return errors.ContextLengthExceeded(
        f"This model's maximum context length is {exc.n_ctx} tokens. However, your {what} resulted in "
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
        f"{exc.param} token ids must be between 0 and {exc.vocabulary_size - 1}", param=exc.param
    ),
    runtime.PromptTooLong: _too_long,
    runtime.AllowanceExceeded: lambda exc: errors.QuotaExceeded(
        f"the API key's tokens left for today (UTC) do not cover this request's prompt ({exc.tokens} tokens)",
        retry_after=seconds_to_midnight(),
    ),
    runtime.PromptEmpty: lambda exc: errors.InvalidRequest(f"'{exc.param}' is empty", param=exc.param),
    runtime.NoChatTemplate: lambda exc: errors.InvalidRequest(
        f"model {exc.model} has no chat template; use /v1/completions for it, "
        "or set a chat_format for it in config.json",
        param="model",
    ),
    runtime.TemplateRejected: lambda exc: errors.InvalidRequest(
        f"the chat template of {exc.model} rejected the messages: {exc.detail}", param="messages"
    ),
    runtime.NoFillInMiddle: lambda exc: errors.InvalidRequest(
        f"model {exc.model} cannot fill in the middle (it has no FIM tokens): 'suffix' is not supported for it",
        param="suffix",
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
}


def api_error(exc: Exception) -> errors.ApiError | None:
    """The ApiError an exception answers with: itself, a runtime failure worded, or None (a bug)."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, runtime.RuntimeFailure):
        return _WORDING[type(exc)](exc)
    return None
