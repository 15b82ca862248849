"""The only module that imports llama_cpp: load a GGUF model and decode many requests at once.

An Engine holds one model and one llama.cpp context with `parallel` sequences (slots) sharing a
unified KV cache. Its worker thread hands it jobs (`prepare`, then `start` when a slot is free)
and calls `step` in a loop: each step is one `llama_decode` over every running sequence — the
next token of those generating, a chunk of the prompt of those starting — after which each
generating sequence samples its token with its own sampler chain. New requests join between
steps (continuous batching). A slot keeps the tokens it last processed, and a new prompt that
begins with them goes to that slot and skips them (prompt cache).

An Engine is not thread-safe: exactly one thread (its ModelWorker) may use it.
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import llama_cpp
from llama_cpp.llama_chat_format import (
    ChatFormatter,
    Jinja2ChatFormatter,
    LlamaChatCompletionHandlerNotFoundException,
    LlamaChatCompletionHandlerRegistry,
)

from inference.errors import ContextLengthExceeded, InvalidRequest
from inference.jobs import ChatJob, Finished, JobEvent, PromptAccepted, Sampling, TextDelta
from inference.stops import StopMatcher

logger = logging.getLogger(__name__)
llama_cpp_logger = logging.getLogger("llama_cpp")

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
    return list(getattr(_log_state, "problems", ()))


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
    flash_attn: bool | str = "auto"  # "auto": llama.cpp uses it where the backend supports it
    use_mmap: bool = True
    use_mlock: bool = False
    chat_format: str = ""  # a llama-cpp-python chat format name; "" = the model's own template
    parallel: int = 1  # sequences decoded together

    def describe(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, n_gpu_layers={self.n_gpu_layers}, "
            f"n_threads={self.n_threads}/{self.n_threads_batch}, parallel={self.parallel}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


class _LoadProgress:
    """Logs a model's load progress in quarters (a big model takes a while)."""

    def __init__(self, name: str) -> None:
        self._name, self._logged = name, 0.0
        self.callback = llama_cpp.llama_progress_callback(self._report)

    def _report(self, progress: float, _user_data: ctypes.c_void_p) -> bool:
        if progress >= self._logged + 0.25 and progress < 1.0:
            self._logged = progress - progress % 0.25
            logger.info("loading %s: %d%%", self._name, round(self._logged * 100))
        return True


# When sequences are generating, a joining prompt is processed this many tokens per step, so
# that it delays their next tokens by one short step at a time, not by its whole length.
PREFILL_CHUNK_WHILE_GENERATING = 64
# Penalties look back this far (llama-cpp-python's default).
PENALTY_LAST_N = 64


@dataclass(frozen=True)
class Prepared:
    """A job whose prompt is rendered and tokenized and fits the context."""

    job: ChatJob
    prompt: list[int]
    stops: tuple[str, ...]


@dataclass
class _Sequence:
    """A running request in a slot."""

    key: Hashable
    prepared: Prepared
    cancelled: Callable[[], bool]
    sampler: Any
    limit: int
    pending: list[int]  # prompt tokens still to decode
    stops: StopMatcher
    decoder: codecs.IncrementalDecoder
    next_token: int | None = None  # sampled, to be decoded in the next step
    generated: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens in the KV cache, positions 0…n-1
    sequence: _Sequence | None = None
    last_used: float = 0.0


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


class Engine:
    """One loaded model, its context and the sequences running in it."""

    def __init__(self, name: str, path: Path, settings: LoadSettings) -> None:
        self.name = name
        self.parallel = settings.parallel
        if hasattr(_log_state, "problems"):
            _log_state.problems.clear()
        self._model = self._load_model(path, settings)
        try:
            self._ctx = self._new_context(settings)
            self._vocab = llama_cpp.llama_model_get_vocab(self._model)
            self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
            self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            self._memory = llama_cpp.llama_get_memory(self._ctx)
            self._n_batch = settings.n_batch
            self._batch = llama_cpp.llama_batch_init(settings.n_batch, 0, 1)
            self._chat_formatter = self._make_chat_formatter(settings.chat_format)
        except BaseException:
            self._free_model_and_context()
            raise
        self._slots = [_Slot(seq_id) for seq_id in range(settings.parallel)]
        self._pieces: dict[int, bytes] = {}  # token -> its text, as bytes (a token may end mid-UTF-8)

    # --- loading ------------------------------------------------------------------------------

    def _load_model(self, path: Path, settings: LoadSettings) -> Any:
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if settings.n_gpu_layers == -1 else settings.n_gpu_layers
        params.load_mode = {
            (True, True): llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK,
            (True, False): llama_cpp.LLAMA_LOAD_MODE_MMAP,
            (False, True): llama_cpp.LLAMA_LOAD_MODE_MLOCK,
            (False, False): llama_cpp.LLAMA_LOAD_MODE_NONE,
        }[(settings.use_mmap, settings.use_mlock)]
        progress = _LoadProgress(self.name)
        params.progress_callback = progress.callback
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise EngineLoadError("; ".join(_recent_llama_problems()) or "llama.cpp could not load it")
        return model

    def _new_context(self, settings: LoadSettings) -> Any:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = params.n_ubatch = settings.n_batch
        params.n_seq_max = settings.parallel
        params.n_threads = settings.n_threads
        params.n_threads_batch = settings.n_threads_batch
        params.flash_attn_type = {
            "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
            True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[settings.flash_attn]
        # One cache for all sequences: any one request may use the whole context.
        params.kv_unified = True
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            raise EngineLoadError(
                "; ".join(_recent_llama_problems()) or "llama.cpp could not create a context"
            )
        return ctx

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def _make_chat_formatter(self, chat_format: str) -> ChatFormatter | None:
        if chat_format:
            return _named_chat_formatter(chat_format)
        template = llama_cpp.llama_model_chat_template(self._model, None)
        if not template:
            return None
        return Jinja2ChatFormatter(
            template=template.decode("utf-8", errors="replace"),
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
            bos_token=self._token_text(llama_cpp.llama_vocab_bos(self._vocab)),
        )

    # --- prompts --------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        while True:
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_special, True)
            if count >= 0:
                return list(tokens[:count])
            capacity = -count

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            length = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
            if length < 0:
                buffer = ctypes.create_string_buffer(-length)
                length = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -length, 0, False)
            piece = self._pieces[token] = buffer.raw[:length]
        return piece

    def prepare(self, job: ChatJob) -> Prepared:
        """Render and tokenize the job's messages with the model's chat format; check they fit."""
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
        prompt = self.tokenize(rendered.prompt, add_special=not rendered.added_special)
        if len(prompt) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your "
                f"messages resulted in {len(prompt)} tokens. Please reduce the length of the "
                "messages."
            )
        # A format's own end marker may be plain text to a model that was not trained on it.
        format_stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop or ""]
        return Prepared(job, prompt, job.stop + tuple(stop for stop in format_stops if stop))

    # --- scheduling ---------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return sum(slot.sequence is not None for slot in self._slots)

    @property
    def free_slots(self) -> int:
        return self.parallel - self.running

    def _running_slots(self) -> list[_Slot]:
        """Slots with a sequence, in the order their sequences started."""
        return sorted((slot for slot in self._slots if slot.sequence), key=lambda slot: slot.sequence.started)

    def _cells_used(self) -> int:
        """KV cells taken: every slot's cached tokens, and the prompts still to be processed."""
        return sum(len(slot.cached) + len(slot.sequence.pending if slot.sequence else ()) for slot in self._slots)

    def _make_room(self, cells: int, keep: _Slot | None = None) -> bool:
        """Evict the caches of idle slots (least recently used first) until `cells` are free."""
        idle = sorted(
            (slot for slot in self._slots if slot.sequence is None and slot.cached and slot is not keep),
            key=lambda slot: slot.last_used,
        )
        while self._cells_used() + cells > self.n_ctx and idle:
            self._forget(idle.pop(0), 0)
        return self._cells_used() + cells <= self.n_ctx

    def _forget(self, slot: _Slot, keep: int) -> None:
        """Drop a slot's cached tokens from position `keep` on."""
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1)
        del slot.cached[keep:]

    def start(self, key: Hashable, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted | None:
        """Put a prepared job into a free slot; None if the KV cache has no room for it yet."""
        prompt = prepared.prompt
        free = [slot for slot in self._slots if slot.sequence is None]
        slot = max(free, key=lambda slot: (_common_prefix(slot.cached, prompt), -slot.last_used))
        # The last prompt token is always decoded again: its logits give the first token.
        reuse = min(_common_prefix(slot.cached, prompt), len(prompt) - 1)
        self._forget(slot, reuse)
        if not self._make_room(len(prompt) - reuse, keep=slot):
            return None
        job = prepared.job
        slot.sequence = _Sequence(
            key=key,
            prepared=prepared,
            cancelled=cancelled,
            sampler=self._sampler(job.sampling),
            limit=min(job.max_tokens or self.n_ctx, self.n_ctx - len(prompt)),
            pending=prompt[reuse:],
            stops=StopMatcher(prepared.stops),
            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
        )
        return PromptAccepted(prompt_tokens=len(prompt), cached_tokens=reuse)

    def _sampler(self, sampling: Sampling) -> Any:
        """The request's own sampler chain (llama.cpp server's order)."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        parts = []
        if (sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty) != (1.0, 0.0, 0.0):
            parts.append(
                llama_cpp.llama_sampler_init_penalties(
                    self._n_vocab,
                    PENALTY_LAST_N,
                    sampling.repeat_penalty,
                    sampling.frequency_penalty,
                    sampling.presence_penalty,
                )
            )
        if sampling.temperature <= 0:
            parts.append(llama_cpp.llama_sampler_init_greedy())
        else:
            if sampling.top_k > 0:
                parts.append(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            parts.append(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            parts.append(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
            parts.append(llama_cpp.llama_sampler_init_temp(sampling.temperature))
            # LLAMA_DEFAULT_SEED (0xFFFFFFFF) means "random": a given seed never maps to it.
            seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed % 0xFFFFFFFF
            parts.append(llama_cpp.llama_sampler_init_dist(seed))
        for part in parts:
            llama_cpp.llama_sampler_chain_add(chain, part)
        return chain

    def step(self) -> list[tuple[Hashable, JobEvent]]:
        """One decode over every running sequence; the events it produced, per job key."""
        events: list[tuple[Hashable, JobEvent]] = []
        for slot in self._slots:
            if slot.sequence is not None and slot.sequence.cancelled():
                events.extend(self._finish(slot, "cancelled"))
        batch, to_sample = self._fill_batch()
        if not batch.n_tokens:
            if self.running:  # every running sequence waits for a cell: the context is full
                newest = max(self._running_slots(), key=lambda slot: slot.sequence.started)
                logger.warning("%s: context full with %d requests; ending the newest", self.name, self.running)
                events.extend(self._finish(newest, "length"))
            return events
        result = llama_cpp.llama_decode(self._ctx, batch)
        if result != 0:
            raise RuntimeError(f"llama_decode failed ({result}); {'; '.join(_recent_llama_problems())}")
        for slot, index in to_sample:
            token = llama_cpp.llama_sampler_sample(slot.sequence.sampler, self._ctx, index)
            events.extend(self._accept(slot, token))
        return events

    def _fill_batch(self) -> tuple[Any, list[tuple[_Slot, int]]]:
        """The next tokens of generating sequences, then prompt chunks of starting ones."""
        batch = self._batch
        batch.n_tokens = 0
        to_sample: list[tuple[_Slot, int]] = []

        def add(slot: _Slot, token: int, logits: bool) -> None:
            index = batch.n_tokens
            batch.token[index] = token
            batch.pos[index] = len(slot.cached)
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = slot.seq_id
            batch.logits[index] = logits
            batch.n_tokens = index + 1
            slot.cached.append(token)
            if logits:
                to_sample.append((slot, index))

        running = self._running_slots()
        generating = [slot for slot in running if not slot.sequence.pending]
        # A generating sequence that finds no cell waits a step (others finish and free cells);
        # its own context never overflows: its limit is what is left of n_ctx after its prompt.
        for slot in generating:
            if self._make_room(1):
                add(slot, slot.sequence.next_token, True)
        budget = self._n_batch - batch.n_tokens
        if generating:
            budget = min(budget, PREFILL_CHUNK_WHILE_GENERATING)
        for slot in running:
            sequence = slot.sequence
            if not sequence.pending or budget <= 0:
                continue
            chunk = sequence.pending[:budget]
            del sequence.pending[: len(chunk)]
            budget -= len(chunk)
            for position, token in enumerate(chunk, start=1):
                add(slot, token, logits=not sequence.pending and position == len(chunk))
        return batch, to_sample

    def _accept(self, slot: _Slot, token: int) -> list[tuple[Hashable, JobEvent]]:
        sequence = slot.sequence
        job = sequence.prepared.job
        if not job.ignore_eos and llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return self._finish(slot, "stop")
        sequence.generated += 1
        text, stopped = sequence.stops.feed(sequence.decoder.decode(self._piece(token)))
        events: list[tuple[Hashable, JobEvent]] = []
        if text:
            events.append((sequence.key, TextDelta(text, sequence.generated)))
        if stopped:
            events.extend(self._finish(slot, "stop"))
        elif sequence.generated >= sequence.limit:
            events.extend(self._finish(slot, "length"))
        else:
            sequence.next_token = token
        return events

    def _finish(self, slot: _Slot, reason: str) -> list[tuple[Hashable, JobEvent]]:
        """End the slot's sequence: text held back (unless cancelled), then Finished.

        The slot keeps its cache: the next prompt that begins with it skips that much.
        """
        sequence = slot.sequence
        assert sequence is not None
        llama_cpp.llama_sampler_free(sequence.sampler)
        slot.sequence, slot.last_used = None, time.monotonic()
        events: list[tuple[Hashable, JobEvent]] = []
        if reason != "cancelled":
            tail = sequence.stops.flush() + sequence.decoder.decode(b"", final=True)
            if tail:
                events.append((sequence.key, TextDelta(tail, sequence.generated)))
        finished = Finished(reason, len(sequence.prepared.prompt), sequence.generated)
        return [*events, (sequence.key, finished)]

    def close(self) -> None:
        for slot in self._slots:
            if slot.sequence is not None:
                llama_cpp.llama_sampler_free(slot.sequence.sampler)
                slot.sequence = None
        llama_cpp.llama_batch_free(self._batch)
        self._free_model_and_context()
        _return_free_memory()

    def _free_model_and_context(self) -> None:
        if getattr(self, "_ctx", None):
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            llama_cpp.llama_model_free(self._model)
            self._model = None
