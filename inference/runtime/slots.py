"""The slots of one context, the KV cells they hold, and the prompt cache their cells go to.

A slot is one llama.cpp sequence. It keeps the tokens it last processed: a new prompt that begins
with them goes to that slot and skips them. Cells are reclaimed only when a prompt needs room —
idle slots' least recently used first — and a long enough run of them is saved in the prompt
cache (runtime.prompt_cache) before it goes; a prompt that begins with a cached prefix longer
than any slot's restores it instead of processing it.

Pure Python over the narrow `SequenceStore` interface; only the model's worker thread calls it
(through its Scheduler).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from inference.runtime.prompt_cache import PromptCache, common_prefix

logger = logging.getLogger(__name__)


class SequenceStore(Protocol):
    """What the slots need of a model context: its sequences' KV cells."""

    def forget(self, seq_id: int, keep: int) -> None:
        """Drop the sequence's cells from position `keep` on."""

    def share(self, source: int, target: int, start: int = 0, end: int = -1) -> None:
        """Give `target`, which holds positions up to `start` as `source` does (none: 0), the cells
        of `source` from `start` to `end` (-1: all of them)."""

    def save_sequence(self, seq_id: int) -> bytes:
        """The sequence's KV state (for the prompt cache)."""

    def restore_sequence(self, seq_id: int, state: bytes) -> bool:
        """Put a saved state into an empty sequence; False if it does not fit (nothing is left)."""


@dataclass(eq=False)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # in its KV cells, positions 0…n-1
    cells: list[int] = field(default_factory=list)  # those cells' ids (a fork shares them)
    choice: object | None = None  # the scheduler's Choice generating in it; None: free
    last_used: float = 0.0


class KvCells:
    """The cells in use, counted as llama.cpp's unified cache holds them: a cell stays in use
    while any slot holds it, and slots that share a prompt share its cells."""

    def __init__(self) -> None:
        self._holders: dict[int, int] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._holders)

    def append(self, slot: Slot, token: int) -> None:
        cell = next(self._ids)
        self._holders[cell] = 1
        slot.tokens.append(token)
        slot.cells.append(cell)

    def share(self, source: Slot, target: Slot, end: int | None = None) -> None:
        """`target`, which holds the first tokens of `source`, holds its cells up to `end` too."""
        start = len(target.tokens)
        for cell in source.cells[start:end]:
            self._holders[cell] += 1
        target.tokens += source.tokens[start:end]
        target.cells += source.cells[start:end]

    def drop(self, slot: Slot, keep: int) -> None:
        for cell in slot.cells[keep:]:
            if self._holders[cell] == 1:
                del self._holders[cell]
            else:
                self._holders[cell] -= 1
        del slot.tokens[keep:], slot.cells[keep:]


class SlotMemory:
    """A context's slots and KV cells, and the prompt cache behind them. `reserved` counts the
    cells promised to prompts still being processed (they count as used)."""

    def __init__(
        self,
        context: SequenceStore,
        parallel: int,
        n_ctx: int,
        *,
        reserved: Callable[[], int],
        cache: PromptCache | None,
    ) -> None:
        self._context = context
        self._reserved = reserved
        self.n_ctx = n_ctx
        self.slots = [Slot(seq_id) for seq_id in range(parallel)]
        self.cells = KvCells()
        self.cache = cache  # where slots' sequences go when their cells are reclaimed

    def used(self) -> int:
        return len(self.cells) + self._reserved()

    def claim(self, prompt: list[int], n: int) -> tuple[list[Slot], int, str] | None:
        """Free slots for a prompt's n choices — first the one holding most of it, or given the
        longest cached prefix of it — with room for the rest of the prompt; the slots, how many
        prompt tokens the first already holds and from where ("slot", "ram", "disk"). None: no
        room until a running request ends (or fewer than n free slots)."""
        free = [slot for slot in self.slots if slot.choice is None]
        if len(free) < n:
            return None
        first = max(free, key=lambda slot: (common_prefix(slot.tokens, prompt), -slot.last_used))
        others = sorted((slot for slot in free if slot is not first), key=lambda slot: slot.last_used)[: n - 1]
        # The last prompt token is always processed again: its logits give the first token.
        reuse = min(common_prefix(first.tokens, prompt), len(prompt) - 1)
        tier = "slot"
        restored = self._restored(first, prompt, reuse, keep=tuple(others))
        if restored is None:
            self.forget(first, reuse)
        else:
            reuse, tier = restored
        for slot in others:
            self.forget(slot, 0)
        if not self.make_room(len(prompt) - reuse, keep=(first, *others)):
            return None
        return [first, *others], reuse, tier if reuse else ""

    def make_room(self, cells: int, keep: tuple[Slot, ...] = ()) -> bool:
        """Forget the caches of idle slots (least recently used first) until `cells` are free."""
        if self.used() + cells <= self.n_ctx:  # the usual case, once per generating choice
            return True
        idle = sorted(
            (slot for slot in self.slots if slot.choice is None and slot.tokens and slot not in keep),
            key=lambda slot: slot.last_used,
        )
        while self.used() + cells > self.n_ctx and idle:
            self.forget(idle.pop(0), 0)
        return self.used() + cells <= self.n_ctx

    def _restored(self, slot: Slot, prompt: list[int], reuse: int, keep: tuple[Slot, ...]) -> tuple[int, str] | None:
        """Restore into the slot the cached prefix of the prompt, if it is longer than what the
        slot holds; how many prompt tokens the slot then holds, and from where ("ram", "disk")
        (None: nothing better cached)."""
        if self.cache is None:
            return None
        found = self.cache.longest(prompt)
        if found is None or min(found[1], len(prompt) - 1) < reuse + self.cache.min_tokens:
            return None
        entry, shared = found
        tier = entry.tier
        self.forget(slot, 0)
        state = self.cache.state_of(entry)
        if state is None:
            return 0, ""
        if not self.make_room(len(entry.tokens), keep=(slot, *keep)):
            return 0, ""
        if not self._context.restore_sequence(slot.seq_id, state):
            logger.warning("llama.cpp refused a cached state of %d tokens (%s); dropped it", len(entry.tokens), tier)
            self.cache.discard(entry)
            return 0, ""
        for token in entry.tokens:
            self.cells.append(slot, token)
        usable = min(shared, len(prompt) - 1)
        self.forget(slot, usable)
        return usable, tier

    def forget(self, slot: Slot, keep: int) -> None:
        """Drop the slot's cells from `keep` on; a long enough run of them is saved in the prompt
        cache first (the whole sequence, keyed by its tokens)."""
        if len(slot.tokens) <= keep:
            return
        if self.cache is not None and len(slot.tokens) - keep >= self.cache.min_tokens:
            self.cache.keep(slot.tokens, lambda: self._context.save_sequence(slot.seq_id))
        self._context.forget(slot.seq_id, keep)
        self.cells.drop(slot, keep)

    def share(self, source: Slot, target: Slot, end: int | None = None) -> None:
        """`target`, which holds the first tokens of `source` (or none), gets its cells up to `end`
        (None: all): a request's other choices, or a prompt's prefix that another is processing."""
        self._context.share(source.seq_id, target.seq_id, len(target.tokens), -1 if end is None else end)
        self.cells.share(source, target, end)

    def close(self) -> None:
        """The model is unloading: let go of its prompt cache's states."""
        if self.cache is not None:
            self.cache.clear()

    def persist(self) -> None:
        """Store the idle slots' sequences and the RAM cache on disk (the model is unloading)."""
        if self.cache is None or self.cache.store is None:
            return
        idle = sorted((slot for slot in self.slots if slot.choice is None), key=lambda slot: -slot.last_used)
        self.cache.persist(
            [
                (tuple(slot.tokens), self._context.save_sequence(slot.seq_id))
                for slot in idle
                if len(slot.tokens) >= self.cache.min_tokens
            ]
        )
