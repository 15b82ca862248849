"""The only module that calls llama_cpp: models, contexts, batches, samplers, named chat formats.

`LlamaModel` is a loaded model and its vocabulary: tokenizing, token texts, rendering messages
with a named chat format of llama-cpp-python's (serving renders the models' own templates).
`GenerationContext` is a context of it with `parallel` sequences sharing one
unified KV cache; it implements the scheduler's `DecodeContext` (decode a batch, sample with a
per-choice sampler chain, logprobs, KV cells) and the reranking scorer's `ScoringContext` (on
sequences of its own). `runtime.llama.embedding` embeds token lists and scores a reranker's pairs.

Nothing here is thread-safe: exactly one thread (the model's worker) may use a model and its
contexts. llama.cpp's own log lines are routed into Python logging, and the warnings of the
thread's last load kept to explain a failure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import types
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import (
    ChatFormatter,
    LlamaChatCompletionHandlerNotFoundException,
    LlamaChatCompletionHandlerRegistry,
)

from inference.runtime.decoding import BatchToken
from inference.runtime.errors import (
    NoChatTemplate,
    NoFillInMiddle,
    TemplateRejected,
)
from inference.runtime.infill import FIM_NAMES, FimTokens
from inference.runtime.jobs import ChatMessage, GenerationJob, PromptImage, TokenLogprob
from inference.runtime.llama.sampling import LlamaSampler, logits_at
from inference.runtime.scoring import NO_WORDS, SCORING_SEQUENCES, YES_WORDS, PairSpecials
from inference.runtime.settings import LoadSettings

# llama.cpp's fill-in-the-middle tokens, in FimTokens' order (LLAMA_TOKEN_NULL, -1: none).
_FIM_TOKENS = (
    *(llama_cpp.llama_vocab_fim_pre, llama_cpp.llama_vocab_fim_suf, llama_cpp.llama_vocab_fim_mid),
    *(llama_cpp.llama_vocab_fim_rep, llama_cpp.llama_vocab_fim_sep),
)

if TYPE_CHECKING:  # runtime.llama.vision builds on this module
    from inference.runtime.llama.vision import EncodedImage, Projector

logger = logging.getLogger(__name__)
llama_cpp_logger = logging.getLogger("llama_cpp")

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line).
# llama.cpp's INFO lines describe every tensor and buffer of a load: DEBUG for us.
_GGML_LOG_CONTINUE = 5
_GGML_TO_LOGGING = {3: logging.WARNING, 4: logging.ERROR}
_log_state = threading.local()


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


# Kept for the life of the process: llama.cpp calls it from any thread, at any time.
_llama_log_callback = llama_cpp.llama_log_callback(_route_llama_log)
llama_cpp.llama_log_set(_llama_log_callback, ctypes.c_void_p(0))


def _recent_llama_problems() -> str:
    return "; ".join(getattr(_log_state, "problems", ()))


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_libc = _load_libc()


def return_free_memory() -> None:
    """Give the memory freed by an unload back to the system.

    glibc keeps freed heap memory in per-thread arenas, and every model has its own worker
    thread: without a trim, each load/unload cycle would leave the process tens of MB bigger.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


class LlamaLoadError(Exception):
    """llama.cpp could not load the model or make its context; the message says why."""


class DecodeFailed(Exception):
    """llama_decode failed: the context is in an unknown state and must be dropped."""


def _named_chat_formatter(name: str) -> ChatFormatter:
    """The prompt formatter llama-cpp-python registered under `name` (e.g. "chatml")."""
    registry = LlamaChatCompletionHandlerRegistry()
    try:
        handler = registry.get_chat_completion_handler_by_name(name)
    except LlamaChatCompletionHandlerNotFoundException:
        known = ", ".join(sorted(registry._chat_handlers))
        raise LlamaLoadError(f"unknown chat_format {name!r} (known: {known})") from None
    # Plain formats are registered as a handler wrapping their formatter function; take it out.
    for cell in (handler.__closure__ if isinstance(handler, types.FunctionType) else None) or ():
        if callable(cell.cell_contents) and cell.cell_contents.__name__.startswith("format"):
            return cell.cell_contents
    raise LlamaLoadError(f"chat_format {name!r} is not a plain prompt format")


# Told the fraction of a model loaded so far (0.0 to 1.0), on the loading thread.
LoadProgress = Callable[[float], None]


class _LoadProgress:
    """Hands a model's load progress to `on_progress` (its worker shows it) and logs it in
    quarters (a big model takes a while)."""

    def __init__(self, name: str, on_progress: LoadProgress | None) -> None:
        self._name, self._logged = name, 0.0
        self._on_progress = on_progress
        self.callback = llama_cpp.llama_progress_callback(self._report)

    def _report(self, progress: float, _user_data: ctypes.c_void_p) -> bool:
        if self._on_progress is not None:
            try:
                self._on_progress(progress)
            except Exception:  # an exception must not unwind through llama.cpp's C frames
                logger.exception("reporting the load progress of %s failed", self._name)
        if progress >= self._logged + 0.25 and progress < 1.0:
            self._logged = progress - progress % 0.25
            logger.info("loading %s: %d%%", self._name, round(self._logged * 100))
        return True


_LOAD_MODES = {
    (True, True): llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK,
    (True, False): llama_cpp.LLAMA_LOAD_MODE_MMAP,
    (False, True): llama_cpp.LLAMA_LOAD_MODE_MLOCK,
    (False, False): llama_cpp.LLAMA_LOAD_MODE_NONE,
}
_FLASH_ATTENTION = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


_KV_CACHE_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}


class LlamaModel:
    """A loaded model and its vocabulary: contexts, tokens, prompts; freed by `close`."""

    def __init__(self, name: str, path: Path, settings: LoadSettings, progress: LoadProgress | None = None) -> None:
        self.name = name
        if hasattr(_log_state, "problems"):
            _log_state.problems.clear()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if settings.n_gpu_layers == -1 else settings.n_gpu_layers
        params.load_mode = _LOAD_MODES[(settings.use_mmap, settings.use_mlock)]
        reporter = _LoadProgress(name, progress)  # kept alive until the load returns
        params.progress_callback = reporter.callback
        self.pointer = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.pointer:
            raise LlamaLoadError(_recent_llama_problems() or "llama.cpp could not load it")
        self.vocab = llama_cpp.llama_model_get_vocab(self.pointer)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd_input = llama_cpp.llama_model_n_embd_inp(self.pointer)  # an image's embeddings' width
        # (token, special) -> its text, as bytes (a token may end mid-UTF-8)
        self._pieces: dict[tuple[int, bool], bytes] = {}
        try:
            self._chat_formatter = _named_chat_formatter(settings.chat_format) if settings.chat_format else None
        except BaseException:
            self.close()
            raise

    def context(self, settings: LoadSettings, **overrides: Any) -> Any:
        """A new llama.cpp context of this model (free it with `llama_free`)."""
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = params.n_ubatch = settings.batch_capacity
        params.n_seq_max = settings.parallel
        params.n_threads = settings.n_threads
        params.n_threads_batch = settings.n_threads_batch
        params.flash_attn_type = _FLASH_ATTENTION[settings.flash_attn]
        params.type_k, params.type_v = _KV_CACHE_TYPES[settings.type_k], _KV_CACHE_TYPES[settings.type_v]
        # One cache for all sequences: any one request may use the whole context.
        params.kv_unified = True
        params.no_perf = True
        for field_name, value in overrides.items():
            setattr(params, field_name, value)
        ctx = llama_cpp.llama_init_from_model(self.pointer, params)
        if not ctx:
            raise LlamaLoadError(_recent_llama_problems() or "llama.cpp could not create a context")
        return ctx

    def rendered_chat(self, text: str) -> list[int]:
        """A chat rendered by its template, as tokens, with the BOS the vocabulary wants once: a
        template that writes the BOS text itself would otherwise give two."""
        return self.single_bos(self.tokenize(text, add_special=True))

    def single_bos(self, tokens: list[int]) -> list[int]:
        """The tokens without a second BOS where a template writes its text and the vocabulary adds one."""
        bos = llama_cpp.llama_vocab_bos(self.vocab)
        return tokens[1:] if len(tokens) > 1 and tokens[0] == tokens[1] == bos else tokens

    def tokenize(self, text: str, *, add_special: bool, special: bool = True) -> list[int]:
        """The text's tokens; `special`: special tokens' texts ("<|im_start|>") parsed as those
        tokens; `add_special`: with BOS (and EOS) where the vocabulary wants them."""
        data = text.encode("utf-8")
        capacity = len(data) + 16
        while True:
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, special)
            if count >= 0:
                return list(tokens[:count])
            capacity = -count

    def piece(self, token: int, special: bool = False) -> bytes:
        """The token's text; a control token's is empty unless `special`."""
        piece = self._pieces.get((token, special))
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            length = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
            if length < 0:
                buffer = ctypes.create_string_buffer(-length)
                length = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -length, 0, special)
            piece = self._pieces[token, special] = buffer.raw[:length]
        return piece

    def detokenize(self, tokens: list[int]) -> str:
        """The tokens' text, control tokens' included (as llama.cpp server's /detokenize)."""
        return b"".join(self.piece(token, special=True) for token in tokens).decode("utf-8", errors="replace")

    def control_tokens(self, texts: tuple[str, ...]) -> frozenset[int]:
        """The control tokens that these texts are made of (llama.cpp server's preserved tokens)."""
        tokens = (token for text in texts if text for token in self.tokenize(text, add_special=False))
        return frozenset(token for token in tokens if llama_cpp.llama_vocab_is_control(self.vocab, token))

    def is_end_of_generation(self, token: int) -> bool:
        return llama_cpp.llama_vocab_is_eog(self.vocab, token)

    def pair_specials(self) -> PairSpecials:
        """The BOS, EOS (else SEP) and SEP that llama.cpp's server puts around a reranker's pair,
        each where the vocabulary adds it."""
        vocab = self.vocab
        eos = llama_cpp.llama_vocab_eos(vocab)
        eos = eos if eos >= 0 else llama_cpp.llama_vocab_sep(vocab)
        return PairSpecials(
            llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None,
            eos if llama_cpp.llama_vocab_get_add_eos(vocab) and eos >= 0 else None,
            llama_cpp.llama_vocab_sep(vocab) if llama_cpp.llama_vocab_get_add_sep(vocab) else None,
        )

    def spellings(self, words: tuple[str, ...]) -> list[int]:
        """The single tokens that spell these words, alone or after a space (else the first
        token of the first word)."""
        found = {
            tokens[0]
            for word in words
            for text in (word, " " + word)
            if len(tokens := self.tokenize(text, add_special=False, special=False)) == 1
        }
        return sorted(found) or self.tokenize(words[0], add_special=False, special=False)[:1]

    def chat_prompt(self, messages: tuple[ChatMessage, ...]) -> tuple[list[int], tuple[str, ...]]:
        """The messages rendered by the model's named chat format (config's `chat_format`), as
        tokens, and the format's stops. Without one, serving renders the model's own template."""
        if self._chat_formatter is None:
            raise NoChatTemplate(model=self.name)
        plain = [{"role": m.role, "content": m.content} for m in messages]
        try:
            rendered = self._chat_formatter(messages=plain)  # type: ignore[arg-type]  # llama_types has a TypedDict per role; templates read plain dicts
        except (jinja2.TemplateError, ValueError) as exc:
            raise TemplateRejected(model=self.name, detail=str(exc)) from None
        prompt = self.tokenize(rendered.prompt, add_special=not rendered.added_special)
        # A format's own end marker may be plain text to a model that was not trained on it.
        format_stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop or ""]
        return prompt, tuple(stop for stop in format_stops if stop)

    def fim_tokens(self, param: str) -> FimTokens:
        """The vocabulary's fill-in-the-middle tokens; raises NoFillInMiddle (naming the request's
        field that asked, `param`) if it lacks the prefix, suffix or middle token."""
        prefix, suffix, middle, repository, separator = (function(self.vocab) for function in _FIM_TOKENS)
        if missing := tuple(name for name, token in zip(FIM_NAMES, (prefix, suffix, middle)) if token < 0):
            raise NoFillInMiddle(model=self.name, missing=missing, param=param)
        bos = llama_cpp.llama_vocab_bos(self.vocab) if llama_cpp.llama_vocab_get_add_bos(self.vocab) else None
        repository, separator = (token if token >= 0 else None for token in (repository, separator))
        return FimTokens(prefix, suffix, middle, repository, separator, bos)

    def close(self) -> None:
        if self.pointer:
            llama_cpp.llama_model_free(self.pointer)
            self.pointer = None


# llama.cpp's LLAMA_MAX_SEQ: a context's sequences.
LLAMA_MAX_SEQUENCES = 256


def fill_batch(native: Any, tokens: Iterable[BatchToken]) -> None:
    """Write the tokens into a llama_batch (one sequence each), which must have room for them."""
    index = -1
    for index, (token, position, seq_id, logits) in enumerate(tokens):
        native.token[index], native.pos[index], native.n_seq_id[index] = token, position, 1
        native.seq_id[index][0], native.logits[index] = seq_id, logits
    native.n_tokens = index + 1


class GenerationContext:
    """A generating context of a model: the scheduler's DecodeContext over llama.cpp; with the
    model's projector, if it has one (it frees it when closed)."""

    def __init__(self, model: LlamaModel, settings: LoadSettings, projector: Projector | None = None) -> None:
        self._model = model
        self.projector = projector
        # The slots' sequences, then the reranking scorer's (its yes_no documents).
        n_seq_max = min(settings.parallel + SCORING_SEQUENCES, LLAMA_MAX_SEQUENCES)
        # llama.cpp keeps room for a token's output per sequence: at least n_seq_max, or it aborts
        # (n_outputs_max defaults to n_batch, which may be fewer).
        self._ctx = model.context(settings, n_seq_max=n_seq_max, n_outputs_max=max(settings.batch_capacity, n_seq_max))
        self.scoring_sequences = range(settings.parallel, n_seq_max)
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.batch_capacity = settings.batch_capacity
        self._batch = llama_cpp.llama_batch_init(self.batch_capacity, 0, 1)
        self._answers = (np.array(model.spellings(YES_WORDS)), np.array(model.spellings(NO_WORDS)))

    def decode(self, batch: list[BatchToken]) -> None:
        if len(batch) > self.batch_capacity:  # would write past the batch's arrays
            raise DecodeFailed(f"a batch of {len(batch)} tokens for a capacity of {self.batch_capacity}")
        fill_batch(self._batch, batch)
        result = llama_cpp.llama_decode(self._ctx, self._batch)
        if result != 0:
            raise DecodeFailed(f"llama_decode returned {result}; {_recent_llama_problems()}".rstrip("; "))

    def sampler(self, job: GenerationJob, seed_offset: int) -> LlamaSampler:
        return LlamaSampler(self._model, self._ctx, job, seed_offset)

    def is_end_of_generation(self, token: int) -> bool:
        return self._model.is_end_of_generation(token)

    def piece(self, token: int, special: bool = False) -> bytes:
        return self._model.piece(token, special)

    def logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        """The token's log-probability under the model (before sampling), and the `top` likeliest."""
        logits = logits_at(self._ctx, index, self._model.n_vocab)
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

    def yes_probability(self, index: int) -> float:
        """P("yes") / (P("yes") + P("no")) at the batch's `index`, over the words' spellings."""
        logits = logits_at(self._ctx, index, self._model.n_vocab)
        yes, no = (np.logaddexp.reduce(logits[tokens].astype(np.float64)) for tokens in self._answers)
        return float(np.exp(yes - np.logaddexp(yes, no)))

    def _token_logprob(self, token: int, logprob: float, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        piece = self._model.piece(token)
        return TokenLogprob(piece.decode("utf-8", errors="replace"), logprob, tuple(piece), top)

    def encode_image(self, image: PromptImage) -> EncodedImage:
        assert self.projector is not None, "only a model with a projector is given images (engine checks)"
        return self.projector.encode(image.data, self._ctx, self.batch_capacity)

    def forget(self, seq_id: int, keep: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, keep, -1)

    def share(self, source: int, target: int, start: int = 0, end: int = -1) -> None:
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, start, end)

    def save_sequence(self, seq_id: int) -> bytes:
        size = llama_cpp.llama_state_seq_get_size(self._ctx, seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self._ctx, buffer, size, seq_id)
        return ctypes.string_at(buffer, written)

    def restore_sequence(self, seq_id: int, state: bytes) -> bool:
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(state), seq_id):
            return True
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, 0, -1)  # whatever a failed restore left
        return False

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        if self.projector is not None:
            self.projector.close()
