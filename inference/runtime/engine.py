"""What a worker drives: a loaded model, its context, and the scheduler of its requests.

An engine prepares a job (renders and tokenizes its prompt, checks it fits), starts prepared
jobs when there is room, and steps: each step is one batched decode over every running request
(see `runtime.scheduler`). A `GenerationEngine` generates, and reranks by P("yes") between its
generating steps (`runtime.scoring`); an `EmbeddingEngine` embeds, or reranks with a reranker's
rank pooling, one job per step. Engines are not thread-safe: exactly one thread (their worker)
may use one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from inference.runtime.channel import Job
from inference.runtime.choices import Events, Key
from inference.runtime.errors import (
    ImageRejected,
    NotServed,
    PromptEmpty,
    PromptTooLong,
    TokenOutOfRange,
    TooManyChoices,
)
from inference.runtime.infill import infill_tokens
from inference.runtime.jobs import (
    ChatJob,
    CompletionJob,
    Detokenized,
    DetokenizeJob,
    Embedded,
    EmbeddingJob,
    Finished,
    GenerationJob,
    ModelJob,
    Prepared,
    PromptAccepted,
    PromptImage,
    Ranked,
    RerankJob,
    RerankMode,
    Tokenized,
    TokenizeJob,
)
from inference.runtime.llama import GenerationContext, LlamaModel, LoadProgress, return_free_memory
from inference.runtime.llama.embedding import EmbeddingContext
from inference.runtime.llama.vision import load_projector
from inference.runtime.prompt_cache import PromptCache
from inference.runtime.prompt_store import PromptStore, identity
from inference.runtime.scheduler import Scheduler
from inference.runtime.scoring import YesNoScorer, pair_prompt
from inference.runtime.settings import LoadSettings


class Engine(Protocol):
    """What a worker needs of an engine (tests drive workers with fakes of it)."""

    n_ctx: int

    @property
    def running(self) -> int: ...

    @property
    def free_slots(self) -> int: ...

    def prepare(self, job: ModelJob) -> Prepared: ...

    def start(self, key: Job, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted | None: ...

    def step(self) -> Events[Job]: ...

    def keep_prompt_cache(self) -> None: ...

    def close(self) -> None: ...


Context = TypeVar("Context", GenerationContext, EmbeddingContext)


def _opened(
    make_context: Callable[[LlamaModel], Context],
    name: str,
    path: Path,
    settings: LoadSettings,
    progress: LoadProgress | None,
) -> tuple[LlamaModel, Context]:
    """The model loaded (its progress told to `progress`) and a context of it; the model is
    freed again if the context fails."""
    model = LlamaModel(name, path, settings, progress)
    try:
        return model, make_context(model)
    except BaseException:
        model.close()
        raise


def _generation_context(model: LlamaModel, settings: LoadSettings, path: Path) -> GenerationContext:
    """A generating context of the model, with its projector if it has one."""
    projector = load_projector(model, settings, path)
    try:
        return GenerationContext(model, settings, projector)
    except BaseException:
        if projector is not None:
            projector.close()
        raise


class GenerationEngine(Generic[Key]):
    """A model, its generating context with `parallel` slots, and their scheduler."""

    def __init__(self, name: str, path: Path, settings: LoadSettings, progress: LoadProgress | None = None) -> None:
        self.name = name
        self.model, self._context = _opened(
            lambda model: _generation_context(model, settings, path), name, path, settings, progress
        )
        self.n_ctx = self._context.n_ctx
        self.parallel = settings.parallel
        self._n_batch = settings.n_batch  # what /infill fits its prefix and suffix into, as llama.cpp
        self._scheduler: Scheduler[Key] = Scheduler(
            self._context,
            settings.parallel,
            cache=_prompt_cache(path, settings),
            drafting=settings.speculative == "ngram",
        )
        self._scorer: YesNoScorer[Key] = YesNoScorer(
            self._context,
            self._scheduler.memory,
            self._context.scoring_sequences,
            spare=lambda: self._scheduler.running,
        )
        self._scoring_turn = False  # with both running, the scorer's steps and the scheduler's alternate

    @property
    def running(self) -> int:
        return self._scheduler.running

    @property
    def free_slots(self) -> int:
        return self._scheduler.free_slots

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        return self.model.tokenize(text, add_special=add_special)

    def prepare(self, job: ModelJob) -> Prepared:
        """Render and tokenize the job's prompt; raises if it cannot run (too long, empty, …)."""
        if (answered := vocabulary_answer(self.model, job)) is not None:
            return answered
        if isinstance(job, RerankJob) and job.mode is RerankMode.YES_NO:
            if len(self._context.scoring_sequences) < 2:
                detail = f"cannot rerank: its parallel ({self.parallel}) leaves llama.cpp no sequences to score in"
                raise NotServed(model=self.name, detail=detail, param="model")
            return rerank_prepared(self.model, job, self.n_ctx)
        if not isinstance(job, GenerationJob):
            raise TypeError(f"a generating model cannot run {type(job).__name__}")
        if job.n > self.parallel:
            raise TooManyChoices(model=self.name, n=job.n, parallel=self.parallel)
        if any(not 0 <= token < self.model.n_vocab for token, _ in job.logit_bias):
            raise TokenOutOfRange(param="logit_bias", vocabulary_size=self.model.n_vocab)
        prompt, stops, param, images = self._prompt(job)
        if len(prompt) >= self.n_ctx:
            raise PromptTooLong(model=self.name, tokens=len(prompt), n_ctx=self.n_ctx, param=param)
        if not prompt:
            raise PromptEmpty(param=param)
        if job.count_only:
            return Prepared(job, prompt, images=images)
        thinking = job.thinking
        markup = job.markup + ((thinking.start, thinking.end) if thinking else ())
        return Prepared(
            job,
            prompt,
            job.stop + stops,
            thinking_end=tuple(self.model.tokenize(thinking.end, add_special=False)) if thinking else (),
            shown=self.model.control_tokens(markup),
            images=images,
        )

    def _prompt(self, job: GenerationJob) -> tuple[list[int], tuple[str, ...], str, tuple[PromptImage, ...]]:
        """The job's prompt as tokens, the stops its chat format adds, the request's field that
        held it, and where its images are. A chat rendered by serving gets the BOS the vocabulary
        wants (once), and no stops of a format: serving puts those it needs in `stop`."""
        if isinstance(job, ChatJob):
            if job.images:
                prompt, images = self._seeing(job)
                return prompt, (), "messages", images
            if job.prompt_text is not None:
                return self.model.rendered_chat(job.prompt_text), (), "messages", ()
            return (*self.model.chat_prompt(job.messages), "messages", ())
        assert isinstance(job, CompletionJob)
        if job.fill is None:
            return self.model.tokenize(job.prompt, add_special=True), (), "prompt", ()
        fim = self.model.fim_tokens(job.fill.param)
        tokenize = self.model.tokenize
        prompt = infill_tokens(
            job.fill,
            fim,
            lambda text, special: tokenize(text, add_special=False, special=special),
            n_ctx=self.n_ctx,
            n_batch=self._n_batch,
            n_predict=job.max_tokens,
        )
        return prompt, (), "prompt", ()

    def _seeing(self, job: ChatJob) -> tuple[list[int], tuple[PromptImage, ...]]:
        """A chat with images: its tokens and where each image is; raises ImageRejected if the
        model cannot see them, or the prompt ends with one (its last token's logits give the
        first token)."""
        projector = self._context.projector
        if projector is None or job.prompt_text is None:
            raise ImageRejected(model=self.name, index=0, detail="it takes text only (no projector)")
        prompt, images = projector.prompt(job.prompt_text, job.images)
        if images and images[-1].end == len(prompt):
            raise ImageRejected(model=self.name, index=len(images) - 1, detail="text must follow the last image")
        return prompt, images

    def start(self, key: Key, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted | None:
        """Put a prepared job into free slots (a rerank job: in the scorer's line); None if there
        is no room until a request ends."""
        if isinstance(prepared.job, RerankJob):
            return self._scorer.admit(key, prepared, cancelled)
        return self._scheduler.admit(key, prepared, cancelled)

    def step(self) -> Events[Key]:
        scoring = self._scorer.busy and (self._scoring_turn or not self._scheduler.running)
        self._scoring_turn = not scoring
        return self._scorer.step() if scoring else self._scheduler.step()

    def keep_prompt_cache(self) -> None:
        """Store the hottest prompt prefixes on disk before an unload (not after a failure)."""
        self._scheduler.memory.persist()

    def close(self) -> None:
        self._scheduler.close()
        self._context.close()
        self.model.close()
        return_free_memory()


def vocabulary_answer(model: LlamaModel, job: ModelJob) -> Prepared | None:
    """A job about the model's vocabulary (tokenize, detokenize), answered as it is prepared;
    None for any other job. Any engine answers these: they need the model, not a context."""
    if isinstance(job, TokenizeJob):
        tokens = model.tokenize(job.content, add_special=job.add_special)
        pieces = tuple(_text_or_bytes(model.piece(token, special=True)) for token in tokens) if job.with_pieces else ()
        return Prepared(job, [], answer=Tokenized(tuple(tokens), pieces))
    if isinstance(job, DetokenizeJob):
        if any(not 0 <= token < model.n_vocab for token in job.tokens):
            raise TokenOutOfRange(param="tokens", vocabulary_size=model.n_vocab)
        return Prepared(job, [], answer=Detokenized(model.detokenize(list(job.tokens))))
    return None


def rerank_prepared(model: LlamaModel, job: RerankJob, n_ctx: int) -> Prepared:
    """A rerank job with its pairs' prompts (`inputs`, one per document); raises for a document
    whose prompt is empty or longer than the context."""
    specials = model.pair_specials()
    prompts = []
    for index, document in enumerate(job.documents):
        param = f"documents[{index}]"
        prompt = pair_prompt(
            model, job.template, job.query, document, specials=specials, bos=job.mode is RerankMode.YES_NO
        )
        if not prompt:
            raise PromptEmpty(param=param)
        if len(prompt) > n_ctx:
            raise PromptTooLong(model=model.name, tokens=len(prompt), n_ctx=n_ctx, param=param)
        prompts.append(prompt)
    return Prepared(job, [], inputs=tuple(prompts))


def _text_or_bytes(piece: bytes) -> str | tuple[int, ...]:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return tuple(piece)


def _prompt_cache(path: Path, settings: LoadSettings) -> PromptCache | None:
    store = None
    if settings.prompt_cache_disk_mb and settings.prompt_cache_directory:
        directory = Path(settings.prompt_cache_directory)
        store = PromptStore(directory, identity(path, settings.as_dict()), settings.prompt_cache_disk_mb * 1024 * 1024)
    if not settings.prompt_cache_mb and store is None:
        return None
    return PromptCache(settings.prompt_cache_mb * 1024 * 1024, store=store)


class EmbeddingEngine(Generic[Key]):
    """A model's embedding context: one job (all its inputs, or a reranker's pairs) per step."""

    parallel = 1

    def __init__(self, name: str, path: Path, settings: LoadSettings, progress: LoadProgress | None = None) -> None:
        self.name = name
        self.model, self._context = _opened(
            lambda model: EmbeddingContext(model, settings), name, path, settings, progress
        )
        self.n_ctx = self._context.n_ctx
        self._started: list[tuple[Key, Prepared]] = []

    @property
    def running(self) -> int:
        return len(self._started)

    @property
    def free_slots(self) -> int:
        return 0 if self._started else 1

    def prepare(self, job: ModelJob) -> Prepared:
        if (answered := vocabulary_answer(self.model, job)) is not None:
            return answered
        if isinstance(job, RerankJob) != self._context.ranks:
            raise NotServed(model=self.name, detail=_RANKING_MISMATCH[self._context.ranks], param="model")
        if isinstance(job, RerankJob):
            return rerank_prepared(self.model, job, self.n_ctx)
        if not isinstance(job, EmbeddingJob):
            raise TypeError(f"an embedding context cannot run {type(job).__name__}")
        inputs = []
        for number, item in enumerate(job.inputs):
            tokens = self.model.tokenize(item, add_special=True) if isinstance(item, str) else list(item)
            param = f"input[{number}]" if len(job.inputs) > 1 else "input"
            if not tokens:
                raise PromptEmpty(param=param)
            if len(tokens) > self.n_ctx:
                raise PromptTooLong(model=self.name, tokens=len(tokens), n_ctx=self.n_ctx, param=param)
            if any(not 0 <= token < self.model.n_vocab for token in tokens):
                raise TokenOutOfRange(param=param, vocabulary_size=self.model.n_vocab)
            inputs.append(tokens)
        return Prepared(job, [], inputs=tuple(inputs))

    def start(self, key: Key, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted:
        self._started.append((key, prepared))
        return PromptAccepted(prompt_tokens=sum(len(tokens) for tokens in prepared.inputs))

    def step(self) -> Events[Key]:
        key, prepared = self._started.pop(0)
        tokens = sum(len(tokens) for tokens in prepared.inputs)
        if isinstance(prepared.job, RerankJob):
            answer: Ranked | Embedded = Ranked(tuple(self._context.scores(prepared.inputs)))
        else:
            answer = Embedded(tuple(self._context.embed(tokens) for tokens in prepared.inputs), tokens)
        return [(key, answer), (key, Finished("stop", tokens, 0))]

    def keep_prompt_cache(self) -> None:
        """Embeddings keep no prompt cache."""

    def close(self) -> None:
        self._context.close()
        self.model.close()
        return_free_memory()


# What an embedding context says to a job it cannot run, by whether it pools by rank.
_RANKING_MISMATCH = {
    True: "is a reranker (its pooling type is rank): it scores documents (/v1/rerank), it does not embed",
    False: "was loaded without rank pooling (for embeddings): unload it to rerank with its reranker setting",
}


def load_engine(name: str, path: Path, settings: LoadSettings, progress: LoadProgress | None = None) -> Engine:
    """The engine a worker needs: a generating one, or an embedding one; the load's progress
    is told to `progress`."""
    if settings.embedding:
        return EmbeddingEngine(name, path, settings, progress)
    return GenerationEngine(name, path, settings, progress)
