"""What the scheduler needs of a model context: decode a batch, sample, token texts, KV cells, images.

`runtime.llama` implements it over llama.cpp; the scheduler's tests use a fake.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from inference.runtime.jobs import GenerationJob, PromptImage, TokenLogprob
from inference.runtime.slots import SequenceStore


class BatchToken(NamedTuple):
    token: int
    position: int
    seq_id: int
    logits: bool  # whether this token's logits are wanted (to sample the next one)


class Sampler(Protocol):
    def sample(self, index: int) -> int:
        """The next token, from the logits of the last decode's `index`th batch token."""

    def accept(self, token: int) -> None:
        """Take `token` as the next one without sampling it (forced): the grammar and the
        penalties go on from it as if it had been sampled."""

    def close(self) -> None: ...


class EncodedImage(Protocol):
    """An image through its projector's encoder, waiting to be decoded; `close` frees it."""

    def decode(self, seq_id: int, position: int) -> None:
        """Decode it into the sequence from `position` (raises if llama.cpp fails)."""

    def close(self) -> None: ...


class DecodeContext(SequenceStore, Protocol):
    """What the scheduler needs of a model context."""

    n_ctx: int
    batch_capacity: int  # tokens one decode takes; at least the number of slots

    def decode(self, batch: list[BatchToken]) -> None:
        """Process the batch (raises if llama.cpp fails)."""

    def sampler(self, job: GenerationJob, seed_offset: int) -> Sampler: ...

    def is_end_of_generation(self, token: int) -> bool: ...

    def piece(self, token: int, special: bool = False) -> bytes:
        """The token's text (a token may end in the middle of a UTF-8 character); a control
        token's is empty unless `special`."""

    def logprob(self, index: int, token: int, top: int) -> TokenLogprob: ...

    def encode_image(self, image: PromptImage) -> EncodedImage:
        """The image through the model's projector (only a context with one gets images)."""
