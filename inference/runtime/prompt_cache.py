"""The host-RAM prompt cache: what a slot held, kept after its KV cells are reclaimed.

A slot keeps its tokens' KV cells until another prompt needs them (`Scheduler._forget`). Before
they go, the sequence's state (llama.cpp's `llama_state_seq_get_data`) is saved here, keyed by
its tokens; a later prompt that begins with such a prefix restores it into a slot instead of
processing it again. Agents repeat thousands of tokens of instructions and tools every turn and
several conversations interleave over few slots: without this, each turn of one conversation
evicts another's. Least recently used entries go first when the budget is full.

Only the model's worker thread uses it (through its scheduler).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# A prefix shorter than this is cheaper to process again than to save and restore.
MIN_CACHED_TOKENS = 64


@dataclass(eq=False)
class CachedPrefix:
    tokens: tuple[int, ...]
    state: bytes  # llama.cpp's state of one sequence holding exactly these tokens
    last_used: float


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


class PromptCache:
    """Sequence states by their tokens, within a budget of bytes (LRU)."""

    def __init__(
        self, budget_bytes: int, *, min_tokens: int = MIN_CACHED_TOKENS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens  # shorter runs of tokens are neither kept nor restored
        self._clock = clock
        self._entries: list[CachedPrefix] = []
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def worth_keeping(self, tokens: list[int]) -> bool:
        """Whether a sequence of these tokens is worth saving: long enough, and not already
        covered by an entry that holds it (or more)."""
        if len(tokens) < self.min_tokens:
            return False
        return not any(common_prefix(entry.tokens, tokens) == len(tokens) for entry in self._entries)

    def put(self, tokens: list[int], state: bytes) -> None:
        """Keep a sequence's state; entries it extends are dropped (it holds them, and more)."""
        if not state or len(state) > self.budget_bytes:
            return
        for entry in [entry for entry in self._entries if common_prefix(entry.tokens, tokens) == len(entry.tokens)]:
            self._remove(entry)
        self._entries.append(CachedPrefix(tuple(tokens), state, self._clock()))
        self.size_bytes += len(state)
        while self.size_bytes > self.budget_bytes:
            self._remove(min(self._entries, key=lambda entry: entry.last_used))

    def longest(self, prompt: list[int]) -> tuple[CachedPrefix, int] | None:
        """The entry sharing the longest prefix with the prompt, and that length (None: none
        shares `min_tokens`)."""
        best: tuple[CachedPrefix, int] | None = None
        for entry in self._entries:
            if entry.tokens[:1] != tuple(prompt[:1]):
                continue
            shared = common_prefix(entry.tokens, prompt)
            if shared >= self.min_tokens and (best is None or shared > best[1]):
                best = (entry, shared)
        if best is not None:
            best[0].last_used = self._clock()
        return best

    def discard(self, entry: CachedPrefix) -> None:
        """Forget an entry that could not be restored (its state does not fit the context now)."""
        if entry in self._entries:
            self._remove(entry)

    def _remove(self, entry: CachedPrefix) -> None:
        self._entries.remove(entry)
        self.size_bytes -= len(entry.state)
