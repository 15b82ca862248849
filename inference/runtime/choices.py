"""A running request and its choices, as the scheduler keeps them: each choice's state, slot,
sampler and output so far; the request's prompt still to process, its images and its leader.

Pure Python; the scheduler's thread only.
"""

from __future__ import annotations

import codecs
import enum
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inference.runtime.decoding import DecodeContext, EncodedImage, Sampler
from inference.runtime.drafting import NgramDrafter
from inference.runtime.jobs import Finished, GenerationJob, JobEvent, Prepared, PromptImage, TokenLogprob
from inference.runtime.slots import KvCells, Slot, SlotMemory
from inference.runtime.stops import StopMatcher
from inference.runtime.thinking import ThinkingWatch

# What the caller knows each request by (a worker: the request's Job); its events come back under it.
Key = TypeVar("Key", bound=Hashable)


Events = list[tuple[Key, JobEvent]]


class ChoiceState(enum.Enum):
    WAITING = "waiting"  # for its request's prompt (a second or later choice)
    PROMPT = "prompt"  # processing its request's prompt (the first choice)
    GENERATING = "generating"
    FINISHED = "finished"


@dataclass(eq=False)
class Choice(Generic[Key]):
    request: Request[Key]
    index: int
    slot: Slot
    sampler: Sampler
    state: ChoiceState
    stops: StopMatcher
    pending: list[int] = field(default_factory=list)  # prompt tokens still to process
    next_token: int | None = None  # sampled, to be decoded in the next step
    generated: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens not yet sent
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    drafter: NgramDrafter = field(default_factory=NgramDrafter)
    draft_proposed: int = 0
    draft_accepted: int = 0
    thinking: ThinkingWatch | None = None  # the job's thinking, counted and bounded

    def next_at(self, index: int) -> tuple[int, bool]:
        """The choice's next token and whether it was forced: the end of thinking when its budget
        is spent (the sampler accepts it), or else sampled at the batch's `index`."""
        forced = self.thinking.forced() if self.thinking is not None else None
        if forced is None:
            return self.sampler.sample(index), False
        self.sampler.accept(forced)
        return forced, True

    def finished(self, reason: str) -> Finished:
        request = self.request
        return Finished(
            reason,
            len(request.prepared.prompt),
            self.generated,
            self.index,
            stop_sequence=self.stops.matched,
            draft_proposed=self.draft_proposed,
            draft_accepted=self.draft_accepted,
            reasoning_tokens=self.thinking.reasoning_tokens if self.thinking is not None else 0,
        )


@dataclass(eq=False)
class Request(Generic[Key]):
    key: Key
    prepared: Prepared
    job: GenerationJob  # the prepared job
    cancelled: Callable[[], bool]
    limit: int  # tokens each choice may generate
    choices: list[Choice[Key]] = field(default_factory=list)
    encoded: EncodedImage | None = None  # its next image, encoded and waiting for its decode step
    leader: Request[Key] | None = None  # an earlier request processing the prefix this one waits for
    shared: int = 0  # how many prompt tokens it takes from its leader

    def unfinished(self) -> list[Choice[Key]]:
        return [choice for choice in self.choices if choice.state is not ChoiceState.FINISHED]

    def processing(self) -> bool:
        """Whether its prompt is being processed (not waiting for a leader's prefix)."""
        return self.choices[0].state is ChoiceState.PROMPT and self.leader is None

    def image_reached(self) -> PromptImage | None:
        """The image its prompt has reached (an image step's to process), if any."""
        return self.prepared.image_at(len(self.choices[0].slot.tokens)) if self.processing() else None

    def tokens_due(self) -> bool:
        """Whether a step of tokens has anything of it: a generating choice, or its prompt's text."""
        return any(choice.state is ChoiceState.GENERATING for choice in self.choices) or (
            self.processing() and self.image_reached() is None
        )

    def fork(self, memory: SlotMemory) -> list[Choice[Key]]:
        """Its other choices, once its prompt is processed: they share its first slot's cells."""
        first = self.choices[0]
        waiting = [choice for choice in self.choices[1:] if choice.state is ChoiceState.WAITING]
        for choice in waiting:
            memory.share(first.slot, choice.slot)
        return waiting

    def holding(self, tokens: list[int]) -> Slot | None:
        """The slot of one of its choices that holds these tokens first, if any."""
        return next((choice.slot for choice in self.unfinished() if choice.slot.tokens[: len(tokens)] == tokens), None)

    def awaited(self) -> int:
        """Prompt tokens it will take from its leader rather than process (0 without a leader)."""
        return max(0, self.shared - len(self.choices[0].slot.tokens)) if self.leader is not None else 0

    def image_step(self, context: DecodeContext, cells: KvCells) -> None:
        """Encode the image its prompt has reached, or decode it once encoded (its cells taken)."""
        image = self.image_reached()
        assert image is not None, "an image step is taken for a request whose prompt reached an image"
        if self.encoded is None:
            self.encoded = context.encode_image(image)
            return
        first = self.choices[0]
        self.encoded.decode(first.slot.seq_id, image.start)
        self.release()
        for token in first.pending[: image.length]:
            cells.append(first.slot, token)
        del first.pending[: image.length]

    def text_ahead(self) -> int:
        """How many of its prompt tokens still to process come before its next image."""
        position = len(self.choices[0].slot.tokens)
        ahead = [image.start for image in self.prepared.images if image.start >= position]
        return min(ahead, default=len(self.prepared.prompt)) - position

    def release(self) -> None:
        """Free its encoded image, if it ended between its image's encode and decode steps."""
        if self.encoded is not None:
            self.encoded.close()
            self.encoded = None
