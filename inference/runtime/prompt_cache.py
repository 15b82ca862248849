"""The host-RAM prompt cache: what a slot held, kept after its KV cells are reclaimed.

A slot keeps its tokens' KV cells until another prompt needs them (`SlotMemory.forget`). Before
they go, the sequence's state (llama.cpp's `llama_state_seq_get_data`) is saved here, keyed by
its tokens; a later prompt that begins with such a prefix restores it into a slot instead of
processing it again. Agents repeat thousands of tokens of instructions and tools every turn and
several conversations interleave over few slots: without this, each turn of one conversation
evicts another's. Least recently used entries go first when the budget is full.

With a PromptStore, prefixes stored on disk when the model was last unloaded are candidates
too (read when one is restored), and `persist` stores the hottest when the model unloads
(runtime.prompt_store).

Only the model's worker thread uses it (through its scheduler).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from inference.runtime.prompt_store import PromptStore, StoredPrefix

logger = logging.getLogger(__name__)

# A prefix shorter than this is cheaper to process again than to save and restore.
MIN_CACHED_TOKENS = 64


@dataclass(eq=False)
class CachedPrefix:
    tokens: tuple[int, ...]
    state: bytes | None  # llama.cpp's state of one sequence holding exactly these tokens
    last_used: float
    stored: StoredPrefix | None = None  # on disk (its state read when it is restored)

    @property
    def tier(self) -> str:
        return "ram" if self.state is not None else "disk"


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
        self,
        budget_bytes: int,
        *,
        min_tokens: int = MIN_CACHED_TOKENS,
        clock: Callable[[], float] = time.monotonic,
        store: PromptStore | None = None,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens  # shorter runs of tokens are neither kept nor restored
        self._clock = clock
        self.store = store
        self._entries: list[CachedPrefix] = []
        self.size_bytes = 0  # of the states held in RAM
        for stored in store.open() if store is not None else ():
            self._entries.append(CachedPrefix(stored.tokens, None, 0.0, stored))

    def __len__(self) -> int:
        return len(self._entries)

    def keep(self, tokens: list[int], state_of: Callable[[], bytes]) -> None:
        """Keep a sequence's state, asked of `state_of` only when it is worth keeping: long
        enough and not held already by an entry (of these tokens or more). Entries it extends
        are dropped (it holds them, and more)."""
        if len(tokens) < self.min_tokens:
            return
        extended = []
        for entry in self._entries:
            shared = common_prefix(entry.tokens, tokens)
            if shared == len(tokens):
                return
            if shared == len(entry.tokens):
                extended.append(entry)
        state = state_of()
        if not state or len(state) > self.budget_bytes:
            return
        for entry in extended:
            self._remove(entry)
        self._entries.append(CachedPrefix(tuple(tokens), state, self._clock()))
        self.size_bytes += len(state)
        while self.size_bytes > self.budget_bytes:
            self._remove(
                min((entry for entry in self._entries if entry.state is not None), key=lambda entry: entry.last_used)
            )

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

    def state_of(self, entry: CachedPrefix) -> bytes | None:
        """The entry's state, read from disk if it is stored there; None (and the entry gone) if
        it cannot be read."""
        if entry.state is not None:
            return entry.state
        state = self.store.state(entry.stored) if self.store is not None and entry.stored is not None else None
        if state is None:
            self.discard(entry)
        return state

    def persist(self, sequences: list[tuple[tuple[int, ...], bytes]]) -> None:
        """Store on disk the slots' `sequences` (tokens, state) and then the RAM entries, most
        recently used first, as far as the disk budget goes (the model is unloading)."""
        if self.store is None:
            return
        in_ram = sorted(
            (entry for entry in self._entries if entry.state is not None), key=lambda entry: -entry.last_used
        )
        prefixes = [*sequences, *((entry.tokens, entry.state) for entry in in_ram if entry.state is not None)]
        written = self.store.write(prefixes)
        if written:
            logger.info("stored %d prompt prefixes in %s", written, self.store.folder)

    def clear(self) -> None:
        """Let go of every entry (the model is unloading; those worth it were stored first):
        its states are freed now, not whenever the collector finds the unloaded model's objects."""
        self._entries.clear()
        self.size_bytes = 0

    def discard(self, entry: CachedPrefix) -> None:
        """Forget an entry that could not be restored, and its file if it has one."""
        if entry in self._entries:
            self._remove(entry)
        if entry.stored is not None:
            entry.stored.path.unlink(missing_ok=True)

    def _remove(self, entry: CachedPrefix) -> None:
        self._entries.remove(entry)
        self.size_bytes -= len(entry.state or b"")
