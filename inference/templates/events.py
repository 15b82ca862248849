"""What reading an answer yields, in order: content, reasoning, and each call's start (its name),
its arguments' JSON text in fragments, and its end (the whole arguments)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class CallStarted:
    index: int
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    text: str


@dataclass(frozen=True)
class CallEnded:
    index: int
    arguments: str


AnswerEvent = Content | Reasoning | CallStarted | CallArguments | CallEnded
