"""Ollama's API, the answer side as a wire shape: the error shape `{"error": "…"}` (and the
exception handler that answers with it), one NDJSON line, the objects of a chat or generate
answer and its closing timings, the models as /api/tags, /api/show and /api/ps describe them,
a pull's status lines, and the OpenAPI description of these. (`inference.serving.ollama` and
`inference.serving.ollama_models` build the answers from them.)"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rest_framework.response import Response

from inference.errors import ApiError
from inference.protocol.errors import error_fields, error_headers
from inference.protocol.ollama import LATEST
from inference.runtime.catalog import ModelFile
from inference.runtime.gguf_header import GGUFInfo

# The version of Ollama whose API this follows (clients read it to know which fields they may send).
OLLAMA_VERSION = "0.13.0"
NDJSON = "application/x-ndjson"


def error_body(message: str) -> dict[str, str]:
    return {"error": message}


def ollama_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF's exception handler for Ollama's API: every error as `{"error": message}`, with our
    statuses (400 bad body, 401, 404 unknown model, 413, 429, 500, 503)."""
    known = error_fields(exc)
    if known is None:
        return None  # a bug: Django's 500 handler answers and logs it
    status, message, _param, code, _type = known
    return Response(error_body(message), status=status, headers=error_headers(exc, code))


def ndjson_line(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_line(error: ApiError) -> bytes:
    """An error after a stream began: one line, then the stream ends."""
    return ndjson_line(error_body(error.message))


def timestamp(when: float | None = None) -> str:
    """Now (or a Unix time) as Ollama writes times: ISO 8601 in UTC, to the microsecond."""
    when = time.time() if when is None else when
    second = int(when // 1)
    if second != _second[0]:  # the date and time of day change once a second, not per token
        _second[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{int((when - second) * 1e6):06d}Z"


_second: list[Any] = [None, ""]  # the last second written, and how


# --- chat and generate answers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """What a finished answer reports of itself (durations in nanoseconds, as Ollama)."""

    total_ns: int
    load_ns: int
    prompt_tokens: int
    prompt_ns: int
    eval_tokens: int
    eval_ns: int

    def fields(self) -> dict[str, int]:
        return {
            "total_duration": self.total_ns,
            "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": self.prompt_ns,
            "eval_count": self.eval_tokens,
            "eval_duration": self.eval_ns,
        }


def answer_object(
    named: str,
    chat_shaped: bool,
    *,
    content: str = "",
    thinking: str = "",
    tool_calls: Sequence[Mapping[str, Any]] = (),
    logprobs: list[dict[str, Any]] | None = None,
    done_reason: str | None = None,
    timings: Timings | None = None,
) -> dict[str, Any]:
    """One object of a chat (`message`) or generate (`response`) answer: a piece of it while
    streaming (`done` false), or the whole or its end (`done_reason`, and its timings)."""
    body: dict[str, Any] = {"model": named, "created_at": timestamp()}
    if chat_shaped:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = list(tool_calls)
        body["message"] = message
    else:
        body["response"] = content
        if thinking:
            body["thinking"] = thinking
    if logprobs is not None:
        body["logprobs"] = logprobs
    body["done"] = done_reason is not None
    if done_reason is not None:
        body["done_reason"] = done_reason
        body.update(timings.fields() if timings else {})
    return body


class TextLines:
    """The NDJSON lines of a streamed answer's text: all but its time and text encoded once per
    answer (encoding each token's object whole cost twice as much; bench/ollama.py)."""

    def __init__(self, named: str, chat_shaped: bool) -> None:
        body = {**answer_object(named, chat_shaped, content="\x01"), "created_at": "\x00"}
        line = ndjson_line(body).decode()
        before, rest = line.split(json.dumps("\x00"))
        between, after = rest.split(json.dumps("\x01"))
        self._before, self._between, self._after = before, between, after

    def line(self, text: str) -> bytes:
        quoted = json.dumps(text, ensure_ascii=False)
        return f'{self._before}"{timestamp()}"{self._between}{quoted}{self._after}'.encode()


def tool_call_object(name: str, arguments: str, index: int) -> dict[str, Any]:
    """A call as Ollama writes it: its arguments an object."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        parsed = {}
    return {"function": {"index": index, "name": name, "arguments": parsed if isinstance(parsed, dict) else {}}}


# --- models ----------------------------------------------------------------------------------------


def _digest(model: ModelFile) -> str:
    """Stands for Ollama's manifest digest: it changes when the file does (not the file's sha256,
    which would mean reading every file)."""
    return hashlib.sha256(f"{model.path.name}:{model.size_bytes}:{model.modified}".encode()).hexdigest()


def _parameter_size(count: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(count) if count else ""


def model_details(info: GGUFInfo | None) -> dict[str, Any]:
    family = info.architecture if info else ""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": _parameter_size(info.parameter_count) if info else "",
        "quantization_level": info.quantization if info else "",
    }


def model_entry(name: str, model: ModelFile, info: GGUFInfo | None) -> dict[str, Any]:
    """A model as /api/tags lists it: `NAME:latest` (an alias under its own name)."""
    return {
        "name": f"{name}{LATEST}",
        "model": f"{name}{LATEST}",
        "modified_at": timestamp(model.modified),
        "size": model.size_bytes,
        "digest": _digest(model),
        "details": model_details(info),
    }


def running_entry(
    name: str, model: ModelFile, info: GGUFInfo | None, *, memory_bytes: int, n_ctx: int, expires_at: str
) -> dict[str, Any]:
    """A loaded model as /api/ps lists it. `size_vram` is 0: this server does not know how much
    of a model llama.cpp placed on a GPU."""
    return {
        **model_entry(name, model, info),
        "expires_at": expires_at,
        "size": memory_bytes or model.size_bytes,
        "size_vram": 0,
        "context_length": n_ctx,
    }


def model_info(info: GGUFInfo | None) -> dict[str, Any]:
    """The GGUF metadata /api/show gives (the keys this server reads from the header)."""
    if info is None:
        return {}
    arch = info.architecture
    found = {
        "general.architecture": arch,
        "general.parameter_count": info.parameter_count,
        f"{arch}.context_length": info.context_length,
        f"{arch}.embedding_length": info.embedding_length,
        f"{arch}.block_count": info.block_count,
        f"{arch}.attention.head_count": info.head_count,
        f"{arch}.attention.head_count_kv": info.head_count_kv,
        "tokenizer.ggml.vocab_size": info.vocab_size,
    }
    return {key: value for key, value in found.items() if value}


def show_body(
    model: ModelFile,
    info: GGUFInfo | None,
    *,
    parameters: Mapping[str, Any],
    template: str,
    capabilities: list[str],
) -> dict[str, Any]:
    """/api/show's answer. `template` is the model's Jinja chat template (not a Go template);
    `parameters` are what this server runs it with (its context, its sampling defaults)."""
    lines = "\n".join(f"{key} {value}" for key, value in parameters.items() if value is not None)
    return {
        "license": "",
        "modelfile": f"# llamasite serves {model.path.name}\nFROM {model.path.name}\n"
        + "".join(f"PARAMETER {line}\n" for line in lines.splitlines()),
        "parameters": lines,
        "template": template,
        "details": model_details(info),
        "model_info": model_info(info),
        "capabilities": capabilities,
        "modified_at": timestamp(model.modified),
    }


# --- pulls -----------------------------------------------------------------------------------------

_PULL_STATUS = {
    "connecting": "pulling manifest",
    "verifying": "verifying sha256 digest",
    "discovering": "writing manifest",
    "done": "success",
}


def pull_status(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A pull's state (services.pulls' snapshot) as Ollama's status line; `digest` names the
    download, as Ollama's names a layer."""
    state = snapshot["state"]
    if state in ("failed", "cancelled"):
        return error_body(snapshot["message"] or f"the pull {state}")
    if state != "downloading":
        return {"status": _PULL_STATUS[state]}
    line: dict[str, Any] = {"status": f"pulling {snapshot['name']}", "digest": f"sha256:{snapshot['id']}"}
    line["completed"] = snapshot["received"]
    if snapshot["total"] is not None:
        line["total"] = snapshot["total"]
    return line


# --- OpenAPI ---------------------------------------------------------------------------------------

_INTEGER, _STRING = {"type": "integer"}, {"type": "string"}
ERROR_SCHEMA = {"type": "object", "properties": {"error": _STRING}, "required": ["error"]}
_CALLS = {"type": "array", "items": {"type": "object", "properties": {"function": {"type": "object"}}}}
_DONE = {
    "done": {"type": "boolean"},
    "done_reason": _STRING,
    "total_duration": _INTEGER,
    "load_duration": _INTEGER,
    "prompt_eval_count": _INTEGER,
    "prompt_eval_duration": _INTEGER,
    "eval_count": _INTEGER,
    "eval_duration": _INTEGER,
    "logprobs": {"type": "array", "items": {"type": "object"}},
}
CHAT_SCHEMA = {
    "type": "object",
    "properties": {
        "model": _STRING,
        "created_at": _STRING,
        "message": {
            "type": "object",
            "properties": {"role": _STRING, "content": _STRING, "thinking": _STRING, "tool_calls": _CALLS},
            "required": ["role", "content"],
        },
        **_DONE,
    },
    "required": ["model", "created_at", "message", "done"],
}
GENERATE_SCHEMA = {
    "type": "object",
    "properties": {"model": _STRING, "created_at": _STRING, "response": _STRING, "thinking": _STRING, **_DONE},
    "required": ["model", "created_at", "response", "done"],
}
STREAM_SCHEMA = {
    "type": "string",
    "description": 'Newline-delimited JSON: one object per line, `done` true on the last (or `{"error"}`).',
}
_NUMBERS = {"type": "array", "items": {"type": "number"}}
EMBED_SCHEMA = {
    "type": "object",
    "properties": {
        "model": _STRING,
        "embeddings": {"type": "array", "items": _NUMBERS},
        "total_duration": _INTEGER,
        "load_duration": _INTEGER,
        "prompt_eval_count": _INTEGER,
    },
    "required": ["model", "embeddings"],
}
EMBEDDINGS_SCHEMA = {"type": "object", "properties": {"embedding": _NUMBERS}, "required": ["embedding"]}
_DETAILS = {"type": "object", "properties": {"format": _STRING, "family": _STRING, "parameter_size": _STRING}}
_ENTRY = {
    "type": "object",
    "properties": {
        "name": _STRING,
        "model": _STRING,
        "modified_at": _STRING,
        "size": _INTEGER,
        "digest": _STRING,
        "details": _DETAILS,
    },
    "required": ["name", "model", "modified_at", "size", "digest", "details"],
}
TAGS_SCHEMA = {"type": "object", "properties": {"models": {"type": "array", "items": _ENTRY}}, "required": ["models"]}
PS_SCHEMA = TAGS_SCHEMA  # each entry also has expires_at, size_vram and context_length
SHOW_SCHEMA = {
    "type": "object",
    "properties": {
        "modelfile": _STRING,
        "parameters": _STRING,
        "template": _STRING,
        "details": _DETAILS,
        "model_info": {"type": "object"},
        "capabilities": {"type": "array", "items": _STRING},
    },
    "required": ["modelfile", "parameters", "template", "details", "model_info", "capabilities"],
}
VERSION_SCHEMA = {"type": "object", "properties": {"version": _STRING}, "required": ["version"]}
STATUS_SCHEMA = {
    "type": "object",
    "properties": {"status": _STRING, "digest": _STRING, "total": _INTEGER, "completed": _INTEGER},
    "required": ["status"],
}
