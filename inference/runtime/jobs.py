"""What a job for a model asks for, the events it produces, and a started generation.

Shared by services (which build jobs), the pool and workers (which queue them) and the engines
(which run them); stdlib only.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from inference.runtime.errors import AllowanceExceeded


@dataclass(frozen=True)
class Sampling:
    """Sampling settings. Those a request leaves out (None) are the model's
    (`with_defaults`, before the job is queued; config.json's temperature, top_p, top_k, min_p,
    seed), so an engine only sees jobs with them filled in."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None after with_defaults: a random seed

    def with_defaults(self, defaults: Mapping[str, Any]) -> Sampling:
        """These settings, each one not given taken from `defaults`."""
        return replace(self, **{name: value for name, value in defaults.items() if getattr(self, name) is None})


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class Thinking:
    """How a model thinks, for the runtime to count and bound it: its template's markers (text,
    "<think>"/"</think>"), whether the prompt ends inside thinking, and the most tokens of
    thinking per choice (None: no limit) before the end marker is forced (runtime.thinking)."""

    start: str
    end: str
    open: bool = False
    budget: int | None = None


# Claims tokens of a key's daily allowance: (tokens wanted, the fewest that will do) → the
# tokens granted, from the fewest to those wanted, or 0 (nothing claimed) if fewer are left.
TokenClaim = Callable[[int, int], int]


# Where each of a chat's images goes in its rendered prompt (runtime.llama.vision gives it to
# llama.cpp's multimodal library). Not mtmd's default "<__media__>": a text that happens to hold
# that is text.
IMAGE_MARKER = "<__llamasite_image__>"


@dataclass(frozen=True, kw_only=True)
class ModelJob:
    """What any job for a model asks for."""

    # Seconds the model stays loaded after this request (0: unload at once, -1: keep);
    # None: the model's idle_timeout.
    keep_alive: float | None = None
    # The key's tokens per day this job may spend (its prompt and output), claimed once its
    # prompt is known (Prepared.within_allowance); None: no such limit.
    token_allowance: TokenClaim | None = field(default=None, compare=False)

    @property
    def on_embedding_context(self) -> bool:
        """Whether the model's embedding context (a worker of its own) runs it."""
        return False


@dataclass(frozen=True, kw_only=True)
class GenerationJob(ModelJob):
    """What every text generation asks for."""

    max_tokens: int | None = None  # None: to the end of sequence or context; 0: the prompt only (into the cache)
    stop: tuple[str, ...] = ()
    # Lines after the first one indented by fewer spaces or tabs end the text before their first
    # other character (llama.cpp's n_indent, for code); 0: no such limit.
    indent: int = 0
    sampling: Sampling = Sampling()
    ignore_eos: bool = False
    n: int = 1  # choices, sharing the prompt
    logprobs: int | None = None  # alternatives reported per token (0: the chosen one); None: none
    grammar: str | None = None  # GBNF that the output must match
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token, bias); -100 bans a token
    count_only: bool = False  # prepare the prompt and report its size; generate nothing
    thinking: Thinking | None = None  # counted per choice and bounded by its budget
    # The template's markup ("<think>", "[TOOL_CALLS]", …): control tokens these texts are made of
    # are printed in the output (others stay hidden), for serving to find the markup it parses.
    markup: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ChatJob(GenerationJob):
    messages: tuple[ChatMessage, ...]
    # The messages rendered by serving with the model's template: tokenized as it is, special
    # tokens parsed, one BOS where the vocabulary wants it. None: rendered by the model's named
    # `chat_format` (llama-cpp-python's), if it has one.
    prompt_text: str | None = None
    # Encoded image files, one per IMAGE_MARKER in prompt_text, in order (the model's projector
    # reads them).
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ProjectFile:
    """Another file of the project, shown to a fill-in-the-middle model before the gap's file."""

    text: str
    filename: str = "tmp"  # llama.cpp's name for a file that came without one


@dataclass(frozen=True)
class FillInMiddle:
    """A gap to fill (runtime.infill lays it out with the model's FIM tokens): the text before it
    and after it, other files of the project, and text that follows the prefix (llama.cpp's
    /infill `prompt`: its special tokens' texts are those tokens; the others' are text)."""

    prefix: str
    suffix: str
    extra: tuple[ProjectFile, ...] = ()
    prompt: str = ""
    # Trimmed to fit the context, as llama.cpp's /infill does; False: a prompt over it is refused.
    trim: bool = False
    param: str = "suffix"  # the request's field that asked for it, for errors


@dataclass(frozen=True, kw_only=True)
class CompletionJob(GenerationJob):
    prompt: str
    fill: FillInMiddle | None = None  # fill in the middle (then `prompt` is only echoed)


@dataclass(frozen=True, kw_only=True)
class EmbeddingJob(ModelJob):
    inputs: tuple[str | tuple[int, ...], ...]  # texts, or token ids

    @property
    def on_embedding_context(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class TokenizeJob(ModelJob):
    """Text into the model's tokens (llama.cpp server's /tokenize): answered without a slot."""

    content: str
    add_special: bool = False  # BOS (and EOS) where the vocabulary wants them
    with_pieces: bool = False  # each token's text too


@dataclass(frozen=True, kw_only=True)
class DetokenizeJob(ModelJob):
    """The model's tokens into text (llama.cpp server's /detokenize): answered without a slot."""

    tokens: tuple[int, ...]


# Where a rerank prompt's template puts the query and each document (their texts are tokenized
# as text: a special token's text in them stays text).
QUERY_MARKER = "<__llamasite_query__>"
DOCUMENT_MARKER = "<__llamasite_document__>"


class RerankMode(enum.StrEnum):
    """How a model scores a document for a query (runtime.scoring)."""

    RANK = "rank"  # a reranker's classifier head (llama.cpp's rank pooling), on the embedding context
    YES_NO = "yes_no"  # a generating model's probability of answering "yes", beside its slots

    @classmethod
    def chosen(cls, setting: str, reranker: bool) -> RerankMode:
        """The mode of a model's `reranker` setting ("auto", "rank", "yes_no"): "auto" is rank
        for a reranker (its GGUF asks for rank pooling), else yes_no."""
        if setting == "auto":
            return cls.RANK if reranker else cls.YES_NO
        return cls(setting)


@dataclass(frozen=True, kw_only=True)
class RerankJob(ModelJob):
    """Score each document's relevance to the query (llama.cpp server's /rerank)."""

    query: str
    documents: tuple[str, ...]
    mode: RerankMode
    # The prompt of one pair, QUERY_MARKER and DOCUMENT_MARKER where they go: the model's chat
    # template's (yes_no) or its GGUF's rerank template (rank); None for rank: llama.cpp's
    # [BOS] query [EOS] [SEP] document [EOS].
    template: str | None = None

    @property
    def on_embedding_context(self) -> bool:
        return self.mode is RerankMode.RANK


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TokenLogprob, ...] = ()  # the most likely tokens at this position


@dataclass(frozen=True)
class PromptAccepted:
    """The prompt fits the context and generation is about to start."""

    prompt_tokens: int
    cached_tokens: int = 0  # of the prompt, found in the cache and not processed again
    cache_tier: str = ""  # where they were found: "slot" (its KV cells), "ram", "disk"; "": nowhere


@dataclass(frozen=True)
class TextDelta:
    text: str
    completion_tokens: int  # tokens generated (for this choice) up to and including this text
    index: int = 0  # the choice
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens that make up the text


@dataclass(frozen=True)
class Finished:
    """A choice ended; a job is over when all its choices have."""

    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    index: int = 0
    stop_sequence: str | None = None  # the one that stopped it (a request's or the template's)
    draft_proposed: int = 0  # tokens guessed by drafting (runtime.drafting)
    draft_accepted: int = 0  # of those, the ones that came true
    reasoning_tokens: int = 0  # of completion_tokens, those inside thinking (not its markers)


@dataclass(frozen=True)
class Embedded:
    vectors: tuple[tuple[float, ...], ...]  # one per input, unit length
    prompt_tokens: int


@dataclass(frozen=True)
class Ranked:
    scores: tuple[float, ...]  # one per document, in the request's order


@dataclass(frozen=True)
class Tokenized:
    tokens: tuple[int, ...]
    # with_pieces: each token's text, or its bytes where they are no UTF-8 text alone (as llama.cpp)
    pieces: tuple[str | tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class Detokenized:
    text: str


JobEvent = PromptAccepted | TextDelta | Finished | Embedded | Ranked | Tokenized | Detokenized


@dataclass(frozen=True)
class PromptImage:
    """An image's place in a prepared prompt: `length` positions from `start`, held by a
    placeholder that stands for this image's content (a negative number: no token is one), so
    that prefix matching and the prompt cache treat the same picture as the same tokens."""

    start: int
    length: int
    data: bytes = field(repr=False)  # the encoded file (the projector encodes it when its turn comes)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Prepared:
    """A job whose prompt is tokenized and fits the context."""

    job: ModelJob
    prompt: list[int]
    stops: tuple[str, ...] = ()
    inputs: tuple[list[int], ...] = ()  # EmbeddingJob: each input's tokens; RerankJob: each pair's
    thinking_end: tuple[int, ...] = ()  # the tokens of the job's thinking end marker (forced)
    shown: frozenset[int] = frozenset()  # control tokens of the job's markup, printed as text
    answer: Tokenized | Detokenized | None = None  # a job about the vocabulary, answered already
    images: tuple[PromptImage, ...] = ()  # in the prompt, in order

    def image_at(self, position: int) -> PromptImage | None:
        """The image whose positions hold `position`, if any."""
        return next((image for image in self.images if image.start <= position < image.end), None)

    def unsplit(self, count: int) -> int:
        """`count` prompt tokens, or fewer so as not to end inside an image (one is decoded whole)."""
        image = self.image_at(count)
        return image.start if image is not None else count

    def within_allowance(self, n_ctx: int) -> Prepared:
        """This job as its token allowance lets it run: the most it could use claimed (its
        prompt, and each choice's output to max_tokens or the context's end), its output capped
        to what was granted; raises AllowanceExceeded if not even the prompt and a token per
        choice are left. Counting a prompt claims nothing."""
        job, claim = self.job, self.job.token_allowance
        if claim is None or getattr(job, "count_only", False) or self.answer is not None:
            return self
        if not isinstance(job, GenerationJob):
            tokens = sum(len(tokens) for tokens in self.inputs)
            if not claim(tokens, tokens):
                raise AllowanceExceeded(tokens=tokens)
            return self
        prompt, choices = len(self.prompt), job.n
        output = min(n_ctx if job.max_tokens is None else job.max_tokens, n_ctx - prompt)
        granted = claim(prompt + choices * output, prompt + choices * min(output, 1))
        if not granted:
            raise AllowanceExceeded(tokens=prompt)
        return replace(self, job=replace(job, max_tokens=(granted - prompt) // choices))


@dataclass
class Generation:
    """A started generation (or embedding): its prompt was accepted; its events follow.

    `choices` is how many choices its events carry (a job's n, times its prompts).
    """

    model: str
    prompt_tokens: int
    events: AsyncIterator[JobEvent]
    choices: int = 1
    sampling: Sampling = Sampling()  # the first job's, with the model's defaults
    cached_tokens: int = 0
    cache_tier: str = ""  # PromptAccepted's (of the first prompt)
    waiting: Callable[[], bool] = lambda: False  # whether more events are already here (runtime.channel)
    load_ms: float | None = None  # the model's load, if this request waited for it
    queue_wait_ms: float | None = None  # from submitted to started
    stream: bool = False  # whether its events are streamed to the client as they come
    end_user: str = ""  # who the client says it is for (OpenAI's `user`)
    images: int = 0  # in its prompts
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
