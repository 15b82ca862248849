"""Reranking: a query and each document laid out as one prompt, and a generating model's
documents scored beside its slots by the probability that it answers "yes".

`pair_prompt` lays out one pair: in a template (the model's chat template rendered around
markers, for yes_no; a reranker GGUF's own `tokenizer.chat_template.rerank`, for rank), or as
llama.cpp's server does for a reranker without one. A reranker (rank) scores all of a job's
pairs in one step of its embedding context (`runtime.llama.embedding`); everything else here
is the yes_no way.

A `YesNoScorer` runs the rerank jobs of a generating context: the GenerationEngine steps it
between the scheduler's steps, so requests that generate wait one scoring step at a time. It
decodes into sequences of its own (seq ids after the slots'), and counts their KV cells in the
slots' `KvCells`: the scheduler sees them as used, and room is made for them as for a prompt
(idle slots' caches go first), leaving a cell free for each generating request's next token.
A job's common prefix (its template and query) is decoded once into a root sequence and shared
with each document's sequence, whose own tokens follow, several documents a step (up to the
batch's capacity and DOCUMENTS_AT_ONCE); the logits of a document's last token give its score,
P("yes") / (P("yes") + P("no")) over the vocabulary's one-token spellings of the words, and its
cells are freed. A document claims its cells when it starts (no sooner than the batch has room
for it), so a started document always finishes. Jobs run one at a time, in order; a cancelled
one ends at the next step, its cells freed (one still waiting holds none).

Pure Python over the narrow `ScoringContext` (`runtime.llama` implements it); not thread-safe:
only the model's worker thread calls it. A decode that fails propagates, as the scheduler's does.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol

from inference.runtime.choices import Events, Key
from inference.runtime.decoding import BatchToken
from inference.runtime.jobs import DOCUMENT_MARKER, QUERY_MARKER, Finished, Prepared, PromptAccepted, Ranked
from inference.runtime.prompt_cache import common_prefix
from inference.runtime.slots import SequenceStore, Slot, SlotMemory

# Documents decoded side by side (each a sequence of the context, besides its root's).
DOCUMENTS_AT_ONCE = 16
# The sequences a scorer needs beyond the slots': the root and the documents'.
SCORING_SEQUENCES = 1 + DOCUMENTS_AT_ONCE
# The answer's words, each spelled as the model may start it (alone, or after a space).
YES_WORDS = ("yes", "Yes", "YES")
NO_WORDS = ("no", "No", "NO")

_MARKERS = re.compile(f"({re.escape(QUERY_MARKER)}|{re.escape(DOCUMENT_MARKER)})")


class PairSpecials(NamedTuple):
    """The tokens llama.cpp's server puts around a pair for a reranker without a template
    ([BOS] query [EOS] [SEP] document [EOS]); None where the vocabulary adds none."""

    bos: int | None
    eos: int | None
    sep: int | None


class Vocabulary(Protocol):
    def tokenize(self, text: str, *, add_special: bool, special: bool = True) -> list[int]: ...


def pair_prompt(
    vocabulary: Vocabulary, template: str | None, query: str, document: str, *, specials: PairSpecials, bos: bool
) -> list[int]:
    """The prompt of one pair. In `template`: its own text with special tokens parsed, the
    query's and the document's as plain text where their markers are, and (if `bos`) one BOS
    before it where the vocabulary wants one; spaces that end a part of the template go with the
    text after them, as one text would be tokenized (": " + "Paris" is ":", " Paris"). Without
    one: llama.cpp's layout, `specials` around the query and the document."""
    if template is None:
        query_tokens = vocabulary.tokenize(query, add_special=False, special=False)
        document_tokens = vocabulary.tokenize(document, add_special=False, special=False)
        start, end, separator = ([] if token is None else [token] for token in specials)
        return [*start, *query_tokens, *end, *separator, *document_tokens, *end]
    texts = {QUERY_MARKER: query, DOCUMENT_MARKER: document}
    tokens: list[int] = []
    carried = ""
    parts = _MARKERS.split(template)  # text, marker, text, …, text
    for number, part in enumerate(parts):
        if part in texts and number % 2:
            tokens += vocabulary.tokenize(carried + texts[part], add_special=False, special=False)
            continue
        text = part if number == len(parts) - 1 else part.rstrip(" ")
        carried = part[len(text) :]
        tokens += vocabulary.tokenize(text, add_special=False) if text else []
    if bos and specials.bos is not None and tokens[:1] != [specials.bos]:
        tokens.insert(0, specials.bos)
    return tokens


class ScoringContext(SequenceStore, Protocol):
    """What a scorer needs of a generating context."""

    batch_capacity: int

    def decode(self, batch: list[BatchToken]) -> None: ...

    def yes_probability(self, index: int) -> float:
        """P("yes") / (P("yes") + P("no")) at the last decode's `index`th batch token."""


@dataclass(eq=False)
class _Document:
    index: int  # in its job's documents
    slot: Slot  # its sequence: the root's cells (shared), then its own, all claimed
    tokens: list[int]  # its own, after the job's common prefix
    decoded: int = 0


@dataclass(eq=False)
class _Run(Generic[Key]):
    key: Key
    prompts: tuple[list[int], ...]
    cancelled: Callable[[], bool]
    prefix: int  # tokens every prompt begins with (the root's), each keeping one of its own
    scores: list[float] = field(default_factory=list)
    started: int = 0  # documents started so far
    prefix_decoded: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(prompt) for prompt in self.prompts)


class YesNoScorer(Generic[Key]):
    """The rerank jobs of one generating context, its scoring sequences and their cells."""

    def __init__(
        self, context: ScoringContext, memory: SlotMemory, seq_ids: range, spare: Callable[[], int] = lambda: 0
    ) -> None:
        self._context = context
        self._memory = memory
        self._spare = spare  # cells to leave free for the requests generating (their next tokens)
        self._root = Slot(seq_ids[0])
        self._free = [Slot(seq_id) for seq_id in reversed(seq_ids[1:])]
        self._runs: deque[_Run[Key]] = deque()
        self._active: list[_Document] = []

    @property
    def busy(self) -> bool:
        return bool(self._runs)

    def admit(self, key: Key, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted:
        """Queue a prepared rerank job (its pairs' prompts in `inputs`); it starts when those
        before it have ended."""
        prompts = prepared.inputs
        prefix = min(len(prompt) for prompt in prompts) - 1
        for prompt in prompts[1:]:
            prefix = min(prefix, common_prefix(prompts[0], prompt))
        run = _Run(key, prompts, cancelled, prefix, scores=[0.0] * len(prompts))
        self._runs.append(run)
        return PromptAccepted(prompt_tokens=run.tokens)

    def step(self) -> Events[Key]:
        """One decode of the first job's prefix or documents; the events of the jobs that ended
        (it, or cancelled ones)."""
        waiting = [run for run in list(self._runs)[1:] if run.cancelled()]
        for run in waiting:  # they hold no cells yet
            self._runs.remove(run)
        ended: Events[Key] = [(run.key, Finished("cancelled", run.tokens, 0)) for run in waiting]
        return ended + self._step(self._runs[0])

    def _step(self, run: _Run[Key]) -> Events[Key]:
        if run.cancelled():
            return self._end(run, "cancelled")
        batch, scored = self._fill(run)
        if not batch:
            return []  # no room in the KV cache until a request ends: the scheduler's steps go on
        self._context.decode(batch)
        for document, index in scored:
            run.scores[document.index] = self._context.yes_probability(index)
            self._release(document.slot)
            self._active.remove(document)
            self._free.append(document.slot)
        if run.started == len(run.prompts) and not self._active:
            return self._end(run, "stop")
        return []

    def _fill(self, run: _Run[Key]) -> tuple[list[BatchToken], list[tuple[_Document, int]]]:
        """The next tokens of the run: its prefix into the root (documents start once it is in
        the cache), else its started documents' tokens, starting more while there is room."""
        capacity = self._context.batch_capacity
        batch: list[BatchToken] = []
        if run.prefix_decoded < run.prefix:
            if not self._root.tokens:
                if not self._room_for(run.prefix):
                    return [], []
                for token in run.prompts[0][: run.prefix]:
                    self._memory.cells.append(self._root, token)
            chunk = self._root.tokens[run.prefix_decoded : run.prefix_decoded + capacity]
            batch = [
                BatchToken(token, run.prefix_decoded + at, self._root.seq_id, False) for at, token in enumerate(chunk)
            ]
            run.prefix_decoded += len(chunk)
            return batch, []
        self._start_documents(run)
        scored: list[tuple[_Document, int]] = []
        for document in self._active:
            if len(batch) >= capacity:
                break
            chunk = document.tokens[document.decoded : document.decoded + capacity - len(batch)]
            position = run.prefix + document.decoded
            document.decoded += len(chunk)
            last = document.decoded == len(document.tokens)
            for at, token in enumerate(chunk):
                batch.append(BatchToken(token, position + at, document.slot.seq_id, last and at == len(chunk) - 1))
            if last:
                scored.append((document, len(batch) - 1))
        return batch, scored

    def _start_documents(self, run: _Run[Key]) -> None:
        """Start the run's next documents while sequences are free, their cells fit and the
        started ones leave room in this step's batch (cells are claimed no sooner than needed)."""
        while self._free and run.started < len(run.prompts):
            pending = sum(len(document.tokens) - document.decoded for document in self._active)
            own = run.prompts[run.started][run.prefix :]
            if pending >= self._context.batch_capacity or not self._room_for(len(own)):
                return
            slot = self._free.pop()
            if run.prefix:
                self._memory.share(self._root, slot)
            for token in own:
                self._memory.cells.append(slot, token)
            self._active.append(_Document(run.started, slot, own))
            run.started += 1

    def _end(self, run: _Run[Key], reason: str) -> Events[Key]:
        """Free the run's sequences and end it: its scores (unless cancelled), then Finished."""
        for document in self._active:
            self._release(document.slot)
            self._free.append(document.slot)
        self._active.clear()
        self._release(self._root)
        self._runs.popleft()
        ranked: Events[Key] = [] if reason == "cancelled" else [(run.key, Ranked(tuple(run.scores)))]
        return [*ranked, (run.key, Finished(reason, run.tokens, 0))]

    def _room_for(self, cells: int) -> bool:
        """Whether `cells` more fit (idle slots' caches make room), the generating requests'
        next cells left free."""
        return self._memory.make_room(cells + self._spare())

    def _release(self, slot: Slot) -> None:
        self._context.forget(slot.seq_id, 0)
        self._memory.cells.drop(slot, 0)
