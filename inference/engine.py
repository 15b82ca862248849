"""The only module that imports llama_cpp: load a GGUF model, generate and embed.

An Engine holds one model and one llama.cpp context with `parallel` sequences (slots) sharing a
unified KV cache. Its worker thread hands it jobs (`prepare`, then `start` when slots are free)
and calls `step` in a loop: each step is one `llama_decode` over every running sequence — the
next token of those generating, a chunk of the prompt of those starting — after which each
generating sequence samples its token with its own sampler chain (grammar, logit bias,
penalties, top-k/p, min-p, temperature, seed). New requests join between steps (continuous
batching). A slot keeps the tokens it last processed, and a new prompt that begins with them goes
to that slot and skips them (prompt cache). A job with n choices decodes its prompt once and
copies its KV cache to n − 1 more slots.

An EmbeddingEngine holds an embedding context of a model and answers the same calls.

Engines are not thread-safe: exactly one thread (its ModelWorker) may use one.
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf
from llama_cpp.llama_chat_format import (
    ChatFormatter,
    Jinja2ChatFormatter,
    LlamaChatCompletionHandlerNotFoundException,
    LlamaChatCompletionHandlerRegistry,
)

from inference.errors import ContextLengthExceeded, InvalidRequest
from inference.jobs import (
    ChatJob,
    CompletionJob,
    Embedded,
    EmbeddingJob,
    Finished,
    GenerationJob,
    JobEvent,
    PromptAccepted,
    Sampling,
    TextDelta,
    TokenLogprob,
)
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
    embedding: bool = False  # an embedding context (EmbeddingEngine), not a generating one

    def describe(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, n_gpu_layers={self.n_gpu_layers}, "
            f"n_threads={self.n_threads}/{self.n_threads_batch}, "
            + ("embeddings" if self.embedding else f"parallel={self.parallel}")
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


class InvalidGrammar(InvalidRequest):
    pass


def json_schema_grammar(schema: dict[str, Any], param: str) -> str:
    """GBNF for JSON matching `schema`; a 400 naming what the converter cannot express."""
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidGrammar(f"unsupported JSON schema construct in '{param}': {exc}", param=param) from None


# Any JSON object (response_format json_object).
JSON_OBJECT_GRAMMAR = JSON_GBNF


@dataclass(frozen=True)
class Prepared:
    """A job whose prompt is tokenized and fits the context."""

    job: Any  # GenerationJob or EmbeddingJob
    prompt: list[int]
    stops: tuple[str, ...] = ()
    inputs: tuple[list[int], ...] = ()  # EmbeddingJob: each input's tokens


@dataclass
class _Sequence:
    """A running choice of a request, in a slot."""

    key: Hashable
    index: int
    prepared: Prepared
    cancelled: Callable[[], bool]
    sampler: Any
    limit: int
    pending: list[int]  # prompt tokens still to decode
    stops: StopMatcher
    decoder: codecs.IncrementalDecoder
    followers: list[_Slot] = field(default_factory=list)  # choices waiting for this prompt's KV
    next_token: int | None = None  # sampled, to be decoded in the next step
    generated: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens not yet sent
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


class _Model:
    """A loaded model and its vocabulary: loading, tokenizing, freeing."""

    def __init__(self, name: str, path: Path, settings: LoadSettings) -> None:
        self.name = name
        if hasattr(_log_state, "problems"):
            _log_state.problems.clear()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if settings.n_gpu_layers == -1 else settings.n_gpu_layers
        params.load_mode = {
            (True, True): llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK,
            (True, False): llama_cpp.LLAMA_LOAD_MODE_MMAP,
            (False, True): llama_cpp.LLAMA_LOAD_MODE_MLOCK,
            (False, False): llama_cpp.LLAMA_LOAD_MODE_NONE,
        }[(settings.use_mmap, settings.use_mlock)]
        progress = _LoadProgress(name)
        params.progress_callback = progress.callback
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise EngineLoadError("; ".join(_recent_llama_problems()) or "llama.cpp could not load it")
        self._ctx: Any = None
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._pieces: dict[int, bytes] = {}  # token -> its text, as bytes (a token may end mid-UTF-8)

    def _context(self, settings: LoadSettings, **overrides: Any) -> Any:
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
        for field_name, value in overrides.items():
            setattr(params, field_name, value)
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

    def _too_long(self, tokens: int, what: str, param: str) -> ContextLengthExceeded:
        error = ContextLengthExceeded(
            f"This model's maximum context length is {self.n_ctx} tokens. However, your "
            f"{what} resulted in {tokens} tokens. Please reduce the length of the {what}."
        )
        error.param = param
        return error

    def _free_model_and_context(self) -> None:
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None


class Engine(_Model):
    """One loaded model, its generation context and the sequences running in it."""

    def __init__(self, name: str, path: Path, settings: LoadSettings) -> None:
        super().__init__(name, path, settings)
        self.parallel = settings.parallel
        try:
            self._ctx = self._context(settings)
            self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
            self._memory = llama_cpp.llama_get_memory(self._ctx)
            self._n_batch = settings.n_batch
            self._batch = llama_cpp.llama_batch_init(settings.n_batch, 0, 1)
            self._chat_formatter = self._make_chat_formatter(settings.chat_format)
        except BaseException:
            self._free_model_and_context()
            raise
        self._slots = [_Slot(seq_id) for seq_id in range(settings.parallel)]

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

    def prepare(self, job: GenerationJob) -> Prepared:
        """Render and tokenize the job's prompt; check it fits (a 400 otherwise)."""
        if job.n > self.parallel:
            raise InvalidRequest(
                f"n={job.n} is more than the {self.parallel} requests model {self.name} decodes "
                "together (its `parallel` setting)",
                param="n",
            )
        if any(not 0 <= token < self._n_vocab for token, _ in job.logit_bias):
            raise InvalidRequest(f"logit_bias token ids must be between 0 and {self._n_vocab - 1}", param="logit_bias")
        if isinstance(job, ChatJob):
            prompt, stops = self._chat_prompt(job)
            what, param = "messages", "messages"
        else:
            prompt, stops = self._completion_prompt(job), ()
            what, param = "prompt", "prompt"
        if len(prompt) >= self.n_ctx:
            raise self._too_long(len(prompt), what, param)
        if not prompt:
            raise InvalidRequest("the prompt is empty", param=param)
        return Prepared(job, prompt, job.stop + stops)

    def _chat_prompt(self, job: ChatJob) -> tuple[list[int], tuple[str, ...]]:
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
        # A format's own end marker may be plain text to a model that was not trained on it.
        format_stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop or ""]
        return prompt, tuple(stop for stop in format_stops if stop)

    def _completion_prompt(self, job: CompletionJob) -> list[int]:
        if job.suffix is None:
            return self.tokenize(job.prompt, add_special=True)
        # Fill in the middle, in the model's own tokens: <pre> prompt <suf> suffix <mid>.
        pre, suf, mid = (
            function(self._vocab)
            for function in (llama_cpp.llama_vocab_fim_pre, llama_cpp.llama_vocab_fim_suf, llama_cpp.llama_vocab_fim_mid)
        )
        if min(pre, suf, mid) < 0:
            raise InvalidRequest(
                f"model {self.name} cannot fill in the middle (it has no FIM tokens): "
                "'suffix' is not supported for it",
                param="suffix",
            )
        return (
            [pre] + self.tokenize(job.prompt, add_special=False) + [suf]
            + self.tokenize(job.suffix, add_special=False) + [mid]
        )

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

    def _make_room(self, cells: int, keep: tuple[_Slot, ...] = ()) -> bool:
        """Evict the caches of idle slots (least recently used first) until `cells` are free."""
        idle = sorted(
            (slot for slot in self._slots if slot.sequence is None and slot.cached and slot not in keep),
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
        """Put a prepared job into free slots (one per choice); None if they or the KV cache
        have no room for it yet."""
        job: GenerationJob = prepared.job
        if self.free_slots < job.n:
            return None
        prompt = prepared.prompt
        free = [slot for slot in self._slots if slot.sequence is None]
        leader = max(free, key=lambda slot: (_common_prefix(slot.cached, prompt), -slot.last_used))
        followers = sorted((slot for slot in free if slot is not leader), key=lambda slot: slot.last_used)[: job.n - 1]
        # The last prompt token is always decoded again: its logits give the first token.
        reuse = min(_common_prefix(leader.cached, prompt), len(prompt) - 1)
        self._forget(leader, reuse)
        for follower in followers:
            self._forget(follower, 0)
        if not self._make_room(len(prompt) - reuse, keep=(leader, *followers)):
            return None
        for index, slot in enumerate((leader, *followers)):
            slot.sequence = _Sequence(
                key=key,
                index=index,
                prepared=prepared,
                cancelled=cancelled,
                sampler=self._sampler(job, seed_offset=index),
                limit=min(job.max_tokens or self.n_ctx, self.n_ctx - len(prompt)),
                pending=prompt[reuse:] if slot is leader else [],
                stops=StopMatcher(prepared.stops),
                decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
            )
        leader.sequence.followers = followers
        return PromptAccepted(prompt_tokens=len(prompt), cached_tokens=reuse)

    def _sampler(self, job: GenerationJob, seed_offset: int) -> Any:
        """The choice's own sampler chain: grammar, logit bias, then llama.cpp server's order."""
        sampling = job.sampling
        parts = []
        if job.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, job.grammar.encode(), b"root")
            if not grammar:
                raise InvalidGrammar("the output grammar could not be compiled", param="response_format")
            parts.append(grammar)
        if job.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(job.logit_bias))(
                *(llama_cpp.llama_logit_bias(token, bias) for token, bias in job.logit_bias)
            )
            parts.append(llama_cpp.llama_sampler_init_logit_bias(self._n_vocab, len(job.logit_bias), biases))
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
            # Each choice of a seeded request has its own seed: n samples, all repeatable.
            seed = (
                llama_cpp.LLAMA_DEFAULT_SEED
                if sampling.seed is None
                else (sampling.seed + seed_offset) % 0xFFFFFFFF
            )
            parts.append(llama_cpp.llama_sampler_init_dist(seed))
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
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
            for choice in (slot, *self._fork(slot)):
                token = llama_cpp.llama_sampler_sample(choice.sequence.sampler, self._ctx, index)
                events.extend(self._accept(choice, token, index))
        return events

    def _fork(self, slot: _Slot) -> list[_Slot]:
        """The other choices of a request whose prompt was just processed: they get its KV."""
        followers, slot.sequence.followers = slot.sequence.followers, []
        for follower in followers:
            llama_cpp.llama_memory_seq_cp(self._memory, slot.seq_id, follower.seq_id, -1, -1)
            follower.cached = list(slot.cached)
        return followers

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
        generating = [slot for slot in running if slot.sequence.next_token is not None]
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

    def _accept(self, slot: _Slot, token: int, index: int) -> list[tuple[Hashable, JobEvent]]:
        sequence = slot.sequence
        job = sequence.prepared.job
        if not job.ignore_eos and llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return self._finish(slot, "stop")
        sequence.generated += 1
        piece = self._piece(token)
        if job.logprobs is not None:
            sequence.logprobs.append(self._logprob(index, token, job.logprobs))
        text, stopped = sequence.stops.feed(sequence.decoder.decode(piece))
        events: list[tuple[Hashable, JobEvent]] = []
        if text:
            events.append(self._delta(sequence, text))
        if stopped:
            events.extend(self._finish(slot, "stop"))
        elif sequence.generated >= sequence.limit:
            events.extend(self._finish(slot, "length"))
        else:
            sequence.next_token = token
        return events

    def _delta(self, sequence: _Sequence, text: str) -> tuple[Hashable, JobEvent]:
        logprobs, sequence.logprobs = tuple(sequence.logprobs), []
        return sequence.key, TextDelta(text, sequence.generated, sequence.index, logprobs)

    def _logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        """The token's log-probability under the model (before sampling), and the `top` likeliest."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        alternatives: tuple[TokenLogprob, ...] = ()
        if top:
            best = np.argpartition(-logprobs, top)[:top]
            alternatives = tuple(
                self._token_logprob(int(candidate), float(logprobs[candidate]))
                for candidate in best[np.argsort(-logprobs[best])]
            )
        return self._token_logprob(token, float(logprobs[token]), alternatives)

    def _token_logprob(self, token: int, logprob: float, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        piece = self._piece(token)
        return TokenLogprob(piece.decode("utf-8", errors="replace"), logprob, tuple(piece), top)

    def _finish(self, slot: _Slot, reason: str) -> list[tuple[Hashable, JobEvent]]:
        """End the slot's sequence: text held back (unless cancelled), then Finished.

        The slot keeps its cache: the next prompt that begins with it skips that much.
        """
        sequence = slot.sequence
        assert sequence is not None
        llama_cpp.llama_sampler_free(sequence.sampler)
        slot.sequence, slot.last_used = None, time.monotonic()
        events: list[tuple[Hashable, JobEvent]] = []
        for follower in sequence.followers:  # choices that never began (cancelled early)
            events.extend(self._finish(follower, reason))
        if reason != "cancelled":
            tail = sequence.stops.flush() + sequence.decoder.decode(b"", final=True)
            if tail:
                events.append(self._delta(sequence, tail))
        finished = Finished(reason, len(sequence.prepared.prompt), sequence.generated, sequence.index)
        return [*events, (sequence.key, finished)]

    def close(self) -> None:
        for slot in self._slots:
            if slot.sequence is not None:
                llama_cpp.llama_sampler_free(slot.sequence.sampler)
                slot.sequence = None
        llama_cpp.llama_batch_free(self._batch)
        self._free_model_and_context()
        _return_free_memory()


class EmbeddingEngine(_Model):
    """An embedding context of a model: one vector per input, mean-pooled unless the model pools
    its own way, normalised to unit length."""

    parallel = 1

    def __init__(self, name: str, path: Path, settings: LoadSettings) -> None:
        super().__init__(name, path, settings)
        try:
            # Each input is one sequence, decoded whole: the batch is the context.
            whole = replace(settings, n_batch=settings.n_ctx, parallel=1)
            self._ctx = self._context(whole, embeddings=True)
            if llama_cpp.llama_pooling_type(self._ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
                llama_cpp.llama_free(self._ctx)  # a generative model: average its token vectors
                self._ctx = self._context(whole, embeddings=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
            self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
            self._memory = llama_cpp.llama_get_memory(self._ctx)
            self._n_embd = llama_cpp.llama_model_n_embd(self._model)
            self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
            self._encode = (
                llama_cpp.llama_encode
                if llama_cpp.llama_model_has_encoder(self._model) and not llama_cpp.llama_model_has_decoder(self._model)
                else llama_cpp.llama_decode
            )
        except BaseException:
            self._free_model_and_context()
            raise
        self._started: list[tuple[Hashable, Prepared]] = []

    def prepare(self, job: EmbeddingJob) -> Prepared:
        inputs = []
        for number, item in enumerate(job.inputs):
            tokens = self.tokenize(item, add_special=True) if isinstance(item, str) else list(item)
            param = f"input[{number}]" if len(job.inputs) > 1 else "input"
            if not tokens:
                raise InvalidRequest("an input is empty", param=param)
            if len(tokens) > self.n_ctx:
                raise self._too_long(len(tokens), "input", param)
            if any(not 0 <= token < self._n_vocab for token in tokens):
                raise InvalidRequest(f"token ids must be between 0 and {self._n_vocab - 1}", param=param)
            inputs.append(tokens)
        return Prepared(job, [], inputs=tuple(inputs))

    @property
    def running(self) -> int:
        return len(self._started)

    @property
    def free_slots(self) -> int:
        return 0 if self._started else 1

    def start(self, key: Hashable, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted:
        self._started.append((key, prepared))
        return PromptAccepted(prompt_tokens=sum(len(tokens) for tokens in prepared.inputs))

    def step(self) -> list[tuple[Hashable, JobEvent]]:
        key, prepared = self._started.pop(0)
        vectors = tuple(self._embed(tokens) for tokens in prepared.inputs)
        tokens = sum(len(tokens) for tokens in prepared.inputs)
        return [(key, Embedded(vectors, tokens)), (key, Finished("stop", tokens, 0))]

    def _embed(self, tokens: list[int]) -> tuple[float, ...]:
        llama_cpp.llama_memory_clear(self._memory, True)
        batch = self._batch
        for index, token in enumerate(tokens):
            batch.token[index] = token
            batch.pos[index] = index
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = 0
            batch.logits[index] = True
        batch.n_tokens = len(tokens)
        if self._encode(self._ctx, batch) != 0:
            raise RuntimeError(f"embedding failed; {'; '.join(_recent_llama_problems())}")
        pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
        vector = np.ctypeslib.as_array(pointer, shape=(self._n_embd,)).astype(np.float64)
        norm = np.linalg.norm(vector)
        return tuple((vector / norm if norm else vector).tolist())

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        self._free_model_and_context()
        _return_free_memory()


def load_engine(name: str, path: Path, settings: LoadSettings) -> Engine | EmbeddingEngine:
    """The engine a worker needs: a generating one, or an embedding one."""
    return (EmbeddingEngine if settings.embedding else Engine)(name, path, settings)
