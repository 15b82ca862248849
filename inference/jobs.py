"""What a generation job asks for, the events it produces, and a started chat completion.

Shared by services (which build jobs), the manager (which queues them) and the engine (which runs
them); stdlib only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are llama.cpp server's."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatJob:
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    sampling: Sampling = Sampling()
    ignore_eos: bool = False
    # Seconds the model stays loaded after this request (0: unload at once, -1: keep);
    # None: the model's idle_timeout.
    keep_alive: float | None = None


@dataclass(frozen=True)
class PromptAccepted:
    """The prompt fits the context and generation is about to start."""

    prompt_tokens: int
    cached_tokens: int = 0  # of the prompt, found in the cache and not processed again


@dataclass(frozen=True)
class TextDelta:
    text: str
    completion_tokens: int  # tokens generated up to and including this text


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


JobEvent = PromptAccepted | TextDelta | Finished


@dataclass
class ChatCompletion:
    """A started chat completion: the prompt was accepted; its events follow."""

    model: str
    prompt_tokens: int
    events: AsyncIterator[JobEvent]
    cached_tokens: int = 0
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
