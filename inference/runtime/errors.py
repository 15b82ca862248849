"""What can go wrong in the runtime, as facts: which model, which limit, which value.

The runtime raises these; it never words them for a client or picks an HTTP status. Each API's
protocol module (`inference.protocol.errors`) turns them into its own error shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_Failure = TypeVar("_Failure", bound=Exception)


@dataclass_transform(eq_default=False)
def fact(cls: type[_Failure]) -> type[_Failure]:
    """A dataclass of facts that stays hashable (compared by identity), as Python's own machinery
    expects of exceptions."""
    return dataclass(eq=False)(cls)


class RuntimeFailure(Exception):
    """Base of the runtime's errors; subclasses are dataclasses of the facts."""

    def __str__(self) -> str:
        return repr(self)


@fact
class NoModelGiven(RuntimeFailure):
    """A request named no model, and there is no default one."""

    available: list[str]


@fact
class ModelNotFound(RuntimeFailure):
    requested: str
    alias_of: str | None  # the requested name was this alias's
    available: list[str]
    directory: str
    directory_missing: bool


@fact
class TooManyChoices(RuntimeFailure):
    """A request asked for more choices than the model decodes together."""

    model: str
    n: int
    parallel: int


@fact
class TokenOutOfRange(RuntimeFailure):
    """A token id (logit_bias, token prompts) outside the vocabulary."""

    param: str
    vocabulary_size: int


@fact
class PromptTooLong(RuntimeFailure):
    model: str
    tokens: int
    n_ctx: int
    param: str  # what held the prompt: "messages", "prompt", "input[3]"


@fact
class AllowanceExceeded(RuntimeFailure):
    """The key's tokens left for today do not cover the prompt (and a token per choice)."""

    tokens: int  # the prompt's


@fact
class PromptEmpty(RuntimeFailure):
    param: str


@fact
class ImageRejected(RuntimeFailure):
    """An image the model cannot take: it has no projector, its projector cannot read the file,
    or the image does not fit a batch (`index`: the request's image, counted from 0)."""

    model: str
    index: int
    detail: str


@fact
class NoChatTemplate(RuntimeFailure):
    model: str


@fact
class TemplateRejected(RuntimeFailure):
    """The model's chat template raised on these messages."""

    model: str
    detail: str


@fact
class NoFillInMiddle(RuntimeFailure):
    """Fill in the middle asked of a model whose vocabulary lacks FIM tokens."""

    model: str
    missing: tuple[str, ...]  # of "prefix", "suffix", "middle"
    param: str  # the request's field that asked for it


@fact
class GrammarNotCompiled(RuntimeFailure):
    """llama.cpp refused the output grammar."""


@fact
class QueueFull(RuntimeFailure):
    model: str
    waiting: int
    retry_after: int  # seconds after which a retry may find room


@fact
class ModelTooLarge(RuntimeFailure):
    """The model's estimated memory does not fit max_memory_mb (beside the pinned models)."""

    model: str
    estimate: str  # the estimate's parts, described
    needed_mb: int
    limit_mb: int
    pinned_mb: int


@fact
class AllPinned(RuntimeFailure):
    """Another model cannot be loaded: every loaded one is pinned."""

    loaded: int


@fact
class ShuttingDown(RuntimeFailure):
    pass


@fact
class LoadFailed(RuntimeFailure):
    model: str
    file: str
    cause: str


@fact
class WorkerFailed(RuntimeFailure):
    """The model's worker broke while running requests; it was unloaded."""

    model: str
    cause: str


@fact
class PrepareFailed(RuntimeFailure):
    """A bug with one request's prompt: that request fails, the model keeps serving."""

    model: str
    cause: str


@fact
class NotServed(RuntimeFailure):
    """A request that the model cannot serve as it is (a reranker asked for embeddings, …)."""

    model: str
    detail: str  # what it is or lacks, and what to do
    param: str
