"""The only module that imports llama_cpp: load a GGUF model, render chat prompts, generate.

An Engine is not thread-safe: exactly one thread (its ModelWorker) may use it.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import ctypes.util
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2
import llama_cpp
from llama_cpp import _internals as llama_internals
from llama_cpp import llama as llama_module
from llama_cpp.llama_chat_format import (
    ChatFormatter,
    Jinja2ChatFormatter,
    LlamaChatCompletionHandlerNotFoundException,
    LlamaChatCompletionHandlerRegistry,
)

from inference.errors import ContextLengthExceeded, InvalidRequest
from inference.jobs import ChatJob, Finished, JobEvent, PromptAccepted, TextDelta
from inference.stops import StopMatcher

logger = logging.getLogger(__name__)
llama_cpp_logger = logging.getLogger("llama_cpp")


# llama-cpp-python (verbose=False) silences llama.cpp by pointing the process's stdout/stderr file
# descriptors at /dev/null while a model loads. In a threaded server that swallows every other
# thread's log lines meanwhile, and two loads at once can leave stderr on /dev/null for good.
# llama.cpp's log goes through Python logging instead (below), so that redirection is disabled.
llama_module.suppress_stdout_stderr = llama_internals.suppress_stdout_stderr = (
    lambda disable=False: contextlib.nullcontext()
)

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line).
# llama.cpp's INFO lines describe every tensor and buffer of a load: DEBUG for us.
_GGML_LOG_CONTINUE = 5
_GGML_TO_LOGGING = {3: logging.WARNING, 4: logging.ERROR}
_log_state = threading.local()


@llama_cpp.llama_log_callback
def _route_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    """Send llama.cpp's log lines to Python logging; keep each thread's last problems."""
    if not hasattr(_log_state, "buffer"):
        _log_state.buffer, _log_state.level = "", logging.DEBUG
        _log_state.problems = deque(maxlen=4)
    if level != _GGML_LOG_CONTINUE:
        _log_state.level = _GGML_TO_LOGGING.get(level, logging.DEBUG)
    _log_state.buffer += text.decode("utf-8", errors="replace")
    *lines, _log_state.buffer = _log_state.buffer.split("\n")
    for line in filter(str.strip, lines):
        llama_cpp_logger.log(_log_state.level, "%s", line)
        if _log_state.level >= logging.WARNING:
            _log_state.problems.append(line.strip())


llama_cpp.llama_log_set(_route_llama_log, ctypes.c_void_p(0))


def _recent_llama_problems() -> list[str]:
    problems = getattr(_log_state, "problems", ())
    return list(problems)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_libc = _load_libc()


def _return_free_memory() -> None:
    """Give the memory freed by an unload back to the system.

    glibc keeps freed heap memory in per-thread arenas, and every model has its own worker
    thread: without a trim, each load/unload cycle would leave the process tens of MB bigger.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


class EngineLoadError(Exception):
    """llama.cpp could not load the model; the message says why."""


@dataclass(frozen=True)
class LoadSettings:
    n_ctx: int
    n_gpu_layers: int
    n_threads: int
    n_threads_batch: int
    n_batch: int = 512
    flash_attn: bool = False
    use_mmap: bool = True
    use_mlock: bool = False
    chat_format: str = ""  # a llama-cpp-python chat format name; "" = the model's own template

    def describe(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, n_gpu_layers={self.n_gpu_layers}, "
            f"n_threads={self.n_threads}/{self.n_threads_batch}"
        )

    def llama_options(self) -> dict[str, Any]:
        """The settings that are `llama_cpp.Llama` arguments of the same name."""
        return {key: value for key, value in asdict(self).items() if key != "chat_format"}


def _named_chat_formatter(name: str) -> ChatFormatter:
    """The prompt formatter llama-cpp-python registered under `name` (e.g. "chatml")."""
    registry = LlamaChatCompletionHandlerRegistry()
    try:
        handler = registry.get_chat_completion_handler_by_name(name)
    except LlamaChatCompletionHandlerNotFoundException:
        known = ", ".join(sorted(registry._chat_handlers))
        raise EngineLoadError(f"unknown chat_format {name!r} (known: {known})") from None
    # Plain formats are registered as a handler wrapping their formatter function; take it out.
    for cell in handler.__closure__ or ():
        if callable(cell.cell_contents) and cell.cell_contents.__name__.startswith("format"):
            return cell.cell_contents
    raise EngineLoadError(f"chat_format {name!r} is not a plain prompt format")


class Engine:
    """One loaded model and its context."""

    def __init__(self, name: str, path: Path, settings: LoadSettings) -> None:
        self.name = name
        if hasattr(_log_state, "problems"):
            _log_state.problems.clear()
        try:
            self._llama = llama_cpp.Llama(model_path=str(path), verbose=False, **settings.llama_options())
        except Exception as exc:  # llama-cpp-python raises ValueError with no reason in it
            reason = "; ".join(_recent_llama_problems()) or str(exc)
            raise EngineLoadError(reason) from None
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._pieces: dict[int, bytes] = {}  # token -> its text, as bytes (a token may end mid-UTF-8)
        try:
            self._chat_formatter = self._make_chat_formatter(settings.chat_format)
        except EngineLoadError:
            self._llama.close()
            raise

    @property
    def n_ctx(self) -> int:
        return self._llama.n_ctx()

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def _make_chat_formatter(self, chat_format: str) -> ChatFormatter | None:
        if chat_format:
            return _named_chat_formatter(chat_format)
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self._llama.token_eos()),
            bos_token=self._token_text(self._llama.token_bos()),
        )

    def chat_prompt(self, job: ChatJob) -> tuple[list[int], tuple[str, ...]]:
        """The job's messages rendered with the model's chat format, as tokens, and its stops."""
        if self._chat_formatter is None:
            raise InvalidRequest(
                f"model {self.name} has no chat template; use /v1/completions for it, "
                "or set a chat_format for it in config.json",
                param="model",
            )
        messages = [{"role": message.role, "content": message.content} for message in job.messages]
        try:
            rendered = self._chat_formatter(messages=messages)
        except (jinja2.TemplateError, ValueError) as exc:
            raise InvalidRequest(
                f"the chat template of {self.name} rejected the messages: {exc}", param="messages"
            ) from None
        tokens = self._llama.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        # A format's own end marker may be plain text to a model that was not trained on it.
        format_stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop or ""]
        return tokens, tuple(stop for stop in format_stops if stop)

    def run_chat(self, job: ChatJob, should_stop: Callable[[], bool]) -> Iterator[JobEvent]:
        """Generate a chat answer: PromptAccepted, then TextDelta pieces, then Finished."""
        prompt, format_stops = self.chat_prompt(job)
        room = self.n_ctx - len(prompt)
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your "
                f"messages resulted in {len(prompt)} tokens. Please reduce the length of the "
                "messages."
            )
        yield PromptAccepted(prompt_tokens=len(prompt))
        limit = room if job.max_tokens is None else min(job.max_tokens, room)
        yield from self._generate(prompt, job, limit, job.stop + format_stops, should_stop)

    def _generate(
        self,
        prompt: list[int],
        job: ChatJob,
        limit: int,
        stops: tuple[str, ...],
        should_stop: Callable[[], bool],
    ) -> Iterator[JobEvent]:
        sampling = job.sampling
        self._llama.set_seed(llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed)
        tokens = self._llama.generate(
            prompt,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stop_matcher = StopMatcher(stops)
        generated, finish_reason = 0, "length"
        try:
            for token in tokens:
                if should_stop():
                    finish_reason = "cancelled"
                    break
                if not job.ignore_eos and llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish_reason = "stop"
                    break
                generated += 1
                piece = self._pieces.get(token)
                if piece is None:
                    piece = self._pieces[token] = self._llama.detokenize([token])
                text, stopped = stop_matcher.feed(decoder.decode(piece))
                if text:
                    yield TextDelta(text, generated)
                if stopped:
                    finish_reason = "stop"
                    break
                if generated >= limit:
                    break
        finally:
            tokens.close()
        if finish_reason != "cancelled":
            tail = stop_matcher.flush() + decoder.decode(b"", final=True)
            if tail:
                yield TextDelta(tail, generated)
        yield Finished(finish_reason, prompt_tokens=len(prompt), completion_tokens=generated)

    def close(self) -> None:
        self._llama.close()
        _return_free_memory()
