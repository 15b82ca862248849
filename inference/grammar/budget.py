"""The bound on building one grammar: how many steps the converter may take and how large the
grammar may grow. A schema is client input: a short one can ask for exponential work (nested
allOf over $refs, overlap checks of a wide oneOf) or a huge grammar, and every step costs the
process's one GIL. Past either bound the schema is refused as too complex, never half-built.

Steps, not seconds: the same schema is accepted or refused on any machine and under any load.
A step is about a microsecond of this converter's Python on a 2-core machine, and a byte of
grammar written costs one too (writing it is most of the work for wide schemas), so the worst
accepted schema takes about half a second (docs/security.md). Real schemas (tool parameters,
response formats) take a few thousand steps and write a few KiB.
"""

from __future__ import annotations

import time

MAX_STEPS = 500_000
MAX_GRAMMAR_BYTES = 512 * 1024
# Steps between two offers of the GIL to the other threads (about a millisecond): without them
# the event loop would wait up to Python's switch interval (5 ms) each time it wants the GIL
# back, several times per request.
YIELD_STEPS = 2_000
# What the converter's work costs, in steps: visiting one (sub)schema (and a step per keyword),
# asking whether two oneOf alternatives exclude each other (canonical JSON of constants: slower),
# and translating a pattern, per character.
VISIT_STEPS = 10
EXCLUDES_STEPS = 40
PATTERN_STEPS = 5


class SchemaTooComplex(ValueError):
    """Building the grammar of a schema would take more work, or make a larger grammar, than
    this server allows."""


class Budget:
    """The steps taken and bytes written while one grammar is built; one per grammar, one thread."""

    def __init__(self, *, steps: int = MAX_STEPS, grammar_bytes: int = MAX_GRAMMAR_BYTES) -> None:
        self.steps_left = steps
        self.bytes_left = grammar_bytes
        self._steps, self._bytes = steps, grammar_bytes
        self._next_yield = steps - YIELD_STEPS

    def spend(self, steps: int = 1) -> None:
        """Take `steps` steps of work; SchemaTooComplex past the bound."""
        self.steps_left -= steps
        if self.steps_left < 0:
            raise SchemaTooComplex(f"building its grammar takes more than {self._steps:,} steps")
        if self.steps_left < self._next_yield:
            self._next_yield = self.steps_left - YIELD_STEPS
            time.sleep(0)

    def write(self, size: int) -> None:
        """Add `size` bytes of grammar text (as many steps); SchemaTooComplex past either bound."""
        self.spend(size)
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise SchemaTooComplex(f"its grammar would be larger than {self._bytes // 1024:,} KiB")
