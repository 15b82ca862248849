"""Admission, decode steps, drafting and cancellation: what each decode step holds.

A Scheduler runs the requests of one model context: `parallel` slots (llama.cpp sequences)
sharing one unified KV cache of `n_ctx` cells (runtime.slots holds them and the prompt cache).
Each step is one decode over every running request — the next token of each generating choice
first, then chunks of the prompts being processed — after which each choice whose logits came
out samples its token. With drafting on, a generating choice's next token is followed by a few
tokens guessed from its own prompt and output, or from the model's recent answers, which the
scheduler keeps (`runtime.drafting`); those that come true are accepted in the same step. New
requests join between steps (continuous batching). A request with n choices processes its prompt
once, in its first slot, then shares those KV cells with its other slots.

Requests whose prompts share a prefix compute it once (runtime.prefixes).

A prompt's images (runtime.llama.vision) are steps of their own: a llama.cpp batch holds tokens or
embeddings, not both. When a prompt reaches an image, one step encodes it and a later one decodes
it into the request's sequence; steps of the other requests' tokens come between, so a picture
delays them by one image step at a time. An image's positions hold a placeholder standing for its
content, so a slot or the prompt cache holding the same picture is a prefix like any other.

A Request owns its slots: it is admitted into all of them at once, and each of its choices is
finished exactly once — by its end of generation, a stop, its limit, a full context or
cancellation — which frees its slot at once.

Pure Python: llama.cpp is reached only through the narrow `DecodeContext` interface
(`runtime.llama` implements it; the tests use a fake). Not thread-safe: only the model's worker
thread calls it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Generic, NamedTuple

from inference.runtime.choices import Choice, ChoiceState, Events, Key, Request
from inference.runtime.decoding import BatchToken, DecodeContext, Sampler
from inference.runtime.drafting import AnswerMemory
from inference.runtime.jobs import GenerationJob, JobEvent, Prepared, PromptAccepted, TextDelta
from inference.runtime.prefixes import follow, take_prefixes
from inference.runtime.prompt_cache import PromptCache
from inference.runtime.slots import SlotMemory
from inference.runtime.stops import StopMatcher
from inference.runtime.thinking import ThinkingWatch

logger = logging.getLogger(__name__)

# When choices are generating, a joining prompt is processed this many tokens per step, so that
# it delays their next tokens by one short step at a time, not by its whole length.
PREFILL_CHUNK_WHILE_GENERATING = 64


class ToSample(NamedTuple, Generic[Key]):
    choice: Choice[Key]
    batch_index: int  # the token whose logits give the choice's next token
    draft: list[int]  # guesses at the tokens after that one, in the batch right after it


class Scheduler(Generic[Key]):
    """The running requests of one context, its slots and its KV cells."""

    def __init__(
        self,
        context: DecodeContext,
        parallel: int,
        *,
        drafting: bool = False,
        clock: Callable[[], float] = time.monotonic,
        cache: PromptCache | None = None,
        share_prefixes: bool = True,
    ) -> None:
        self._context = context
        self._drafting = drafting
        self._answers = AnswerMemory() if drafting else None
        self._share_prefixes = share_prefixes
        self._clock = clock
        self.n_ctx = context.n_ctx
        self._requests: list[Request[Key]] = []  # running, in the order they were admitted
        self._image_last = False  # whether the last step was an image's (the next is the others')
        self.memory = SlotMemory(context, parallel, context.n_ctx, reserved=self._reserved, cache=cache)
        self.slots = self.memory.slots

    @property
    def running(self) -> int:
        """Slots in use."""
        return sum(slot.choice is not None for slot in self.slots)

    @property
    def free_slots(self) -> int:
        return len(self.slots) - self.running

    def _reserved(self) -> int:
        """KV cells promised to the prompts still to be processed."""
        return sum(len(request.choices[0].pending) - request.awaited() for request in self._requests)

    # --- admission ------------------------------------------------------------------------------

    def admit(self, key: Key, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted | None:
        """Put a prepared job into free slots (one per choice); None if they or the KV cache have
        no room for it until a running request ends. Raises what the context raises for its
        samplers (a grammar llama.cpp refuses), leaving nothing behind."""
        job = prepared.job
        if not isinstance(job, GenerationJob):
            raise TypeError(f"a scheduler generates; {type(job).__name__} is no generation job")
        prompt = prepared.prompt
        claimed = self.memory.claim(prompt, job.n)
        if claimed is None:
            return None
        slots, reuse, tier = claimed
        samplers = _samplers(self._context, job)
        limit = min(self.n_ctx if job.max_tokens is None else job.max_tokens, self.n_ctx - len(prompt))
        request = Request(key, prepared, job, cancelled, limit=limit)
        for index, (slot, sampler) in enumerate(zip(slots, samplers)):
            state = ChoiceState.PROMPT if index == 0 else ChoiceState.WAITING
            choice = Choice(request, index, slot, sampler, state, StopMatcher(prepared.stops, job.indent))
            if job.thinking is not None:
                choice.thinking = ThinkingWatch(job.thinking, prepared.thinking_end)
            slot.choice = choice
            request.choices.append(choice)
        if (whole := prepared.unsplit(reuse)) < reuse:
            self.memory.forget(slots[0], whole)
            reuse = whole
        request.choices[0].pending = prompt[reuse:]
        if self._share_prefixes:
            reuse, tier = follow(request, self._requests, self.memory, reuse, tier)
        self._requests.append(request)
        return PromptAccepted(prompt_tokens=len(prompt), cached_tokens=reuse, cache_tier=tier if reuse else "")

    # --- steps ----------------------------------------------------------------------------------

    def step(self) -> Events[Key]:
        """One decode over every running request; the events it produced, per job key."""
        events: Events[Key] = []
        for request in list(self._requests):
            if request.cancelled():
                events += self._end(request, "cancelled")
        take_prefixes(self._requests, self.memory)
        due = next((request for request in self._requests if request.image_reached()), None)
        if due is not None and (not self._image_last or not any(r.tokens_due() for r in self._requests)):
            self._image_last = True
            due.image_step(self._context, self.memory.cells)
            return events
        self._image_last = False
        batch, to_sample = self._fill_batch()
        if not batch:
            if self._requests:  # every generating choice waits for a cell: the context is full
                logger.warning("context full with %d requests; ending the newest", len(self._requests))
                events += self._end(self._requests[-1], "length")
            return events
        self._context.decode(batch)
        for choice, index, draft in to_sample:
            ready = [choice, *choice.request.fork(self.memory)] if choice.state is ChoiceState.PROMPT else [choice]
            for each in ready:  # a limit of 0 only puts the prompt into the cache (llama.cpp's n_predict 0)
                events += self._verify(each, index, draft) if each.request.limit else self._finish(each, "length")
        return events

    def _fill_batch(self) -> tuple[list[BatchToken], list[ToSample[Key]]]:
        """The next tokens of generating choices (each followed by its draft, if any), then prompt
        chunks of starting requests."""
        batch: list[BatchToken] = []
        to_sample: list[ToSample[Key]] = []

        def add(choice: Choice[Key], token: int, logits: bool) -> None:
            slot = choice.slot
            batch.append(BatchToken(token, len(slot.tokens), slot.seq_id, logits))
            self.memory.cells.append(slot, token)

        generating = [
            choice for request in self._requests for choice in request.choices if choice.state is ChoiceState.GENERATING
        ]
        # Drafts use only the batch room that the next tokens and this step's prompt chunks leave.
        prompt_tokens = sum(len(request.choices[0].pending) for request in self._requests if request.processing())
        spare = self._context.batch_capacity - len(generating) - min(prompt_tokens, PREFILL_CHUNK_WHILE_GENERATING)
        # A choice that finds no cell waits a step (others finish and free cells); its own
        # context never overflows: its limit is what is left of n_ctx after its prompt.
        for number, choice in enumerate(generating):
            if not self.memory.make_room(1):
                continue
            next_token = choice.next_token
            assert next_token is not None, "a generating choice has sampled its next token"
            draft: list[int] = []
            if self._drafting and not (choice.thinking and choice.thinking.forcing):  # forced: nothing to guess
                # Drafts take no cell that the next tokens still need and evict no cache, and stop
                # where the choice's limit comes (the last draft token's logits give its last token).
                free = self.n_ctx - self.memory.used() - (len(generating) - number)
                most = min(spare, free, choice.request.limit - choice.generated - 1)
                draft = choice.drafter.propose(
                    choice.slot.tokens, next_token, most, beside_others=len(generating) > 1, memory=self._answers
                )
                choice.draft_proposed += len(draft)
                spare -= len(draft)
            to_sample.append(ToSample(choice, len(batch), draft))
            for token in (next_token, *draft):
                add(choice, token, True)
        budget = self._context.batch_capacity - len(batch)
        if generating:
            budget = min(budget, PREFILL_CHUNK_WHILE_GENERATING)
        for request in self._requests:
            if not request.processing() or budget <= 0:
                continue
            first = request.choices[0]
            chunk = first.pending[: min(budget, request.text_ahead())]
            if not chunk:  # its prompt has reached an image: an image step's
                continue
            del first.pending[: len(chunk)]
            budget -= len(chunk)
            for token in chunk[:-1]:
                add(first, token, logits=False)
            if not first.pending:
                to_sample.append(ToSample(first, len(batch), []))
            add(first, chunk[-1], logits=not first.pending)
        return batch, to_sample

    def _verify(self, choice: Choice[Key], index: int, draft: list[int]) -> Events[Key]:
        """Sample the choice's next token at `index` and, while it matches the draft token after it,
        the next one at that token's (runtime.drafting); forget the cells of the rest of the draft."""
        token, forced = choice.next_at(index)
        events = self._accept(choice, token, index, forced)
        accepted = 0
        for guess in draft:
            if choice.state is not ChoiceState.GENERATING or token != guess:
                break
            accepted += 1
            choice.draft_accepted += 1
            token, forced = choice.next_at(index + accepted)
            events += self._accept(choice, token, index + accepted, forced)
        if draft:
            choice.drafter.verified(len(draft), accepted)
            self.memory.forget(choice.slot, len(choice.slot.tokens) - len(draft) + accepted)
        return events

    def _accept(self, choice: Choice[Key], token: int, index: int, forced: bool = False) -> Events[Key]:
        request = choice.request
        job = request.job
        if not job.ignore_eos and self._context.is_end_of_generation(token):
            return self._finish(choice, "stop")
        choice.generated += 1
        if job.logprobs is not None:
            choice.logprobs.append(self._context.logprob(index, token, job.logprobs))
        text = choice.decoder.decode(self._context.piece(token, special=token in request.prepared.shown))
        if choice.thinking is not None:
            choice.thinking.feed(text, forced=forced)
        text, stopped = choice.stops.feed(text)
        events: Events[Key] = [self._delta(choice, text)] if text else []
        if stopped:  # a line indented too little ends code as llama.cpp's limits do
            events += self._finish(choice, "length" if choice.stops.underindented else "stop")
        elif choice.generated >= choice.request.limit:
            events += self._finish(choice, "length")
        else:
            choice.next_token, choice.state = token, ChoiceState.GENERATING
        return events

    def _delta(self, choice: Choice[Key], text: str) -> tuple[Key, JobEvent]:
        logprobs, choice.logprobs = tuple(choice.logprobs), []
        return choice.request.key, TextDelta(text, choice.generated, choice.index, logprobs)

    # --- endings --------------------------------------------------------------------------------

    def _end(self, request: Request[Key], reason: str) -> Events[Key]:
        """Finish every choice of the request that has not finished yet."""
        events: Events[Key] = []
        for choice in request.unfinished():
            events += self._finish(choice, reason)
        return events

    def _finish(self, choice: Choice[Key], reason: str) -> Events[Key]:
        """End a choice: text held back (unless cancelled), then Finished; its slot is free and
        keeps its cache (the next prompt that begins with it skips that much)."""
        choice.state = ChoiceState.FINISHED
        choice.sampler.close()
        choice.slot.choice, choice.slot.last_used = None, self._clock()
        request = choice.request
        if self._answers is not None:  # the slot holds the prompt and the answer but its last token
            answer_start = len(request.prepared.prompt)
            self._answers.remember(choice.slot.tokens, answer_start, answer_start + choice.generated - 1)
        if not request.unfinished():
            self._requests.remove(request)
            request.release()
        events: Events[Key] = []
        if reason != "cancelled":
            # A character cut by the end (its last bytes never generated) is not sent: it would
            # be a replacement character, and one piece more than tokens.
            tail = choice.stops.flush()
            if tail or choice.logprobs:  # the logprobs of tokens that gave no text go out too
                events.append(self._delta(choice, tail))
        return [*events, (request.key, choice.finished(reason))]

    def close(self) -> None:
        """Free the samplers of every running choice and the prompt cache's states (the model
        is being unloaded)."""
        for request in self._requests:
            for choice in request.unfinished():
                choice.state = ChoiceState.FINISHED
                choice.sampler.close()
                choice.slot.choice = None
            request.release()
        self._requests.clear()
        self.memory.close()


def _samplers(context: DecodeContext, job: GenerationJob) -> list[Sampler]:
    """A sampler per choice of the job; none left behind if one fails."""
    samplers: list[Sampler] = []
    try:
        for index in range(job.n):
            samplers.append(context.sampler(job, seed_offset=index))
    except BaseException:
        for sampler in samplers:
            sampler.close()
        raise
    return samplers
