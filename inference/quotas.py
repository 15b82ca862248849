"""A key's quotas as one request found them: what the rate-limit headers say. Stdlib only (the
errors that carry them are)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Allowance:
    """One quota of a key as a request found it: its limit, what is left, when it is whole."""

    limit: int
    remaining: int
    resets_at: datetime  # requests: when the oldest request in the window leaves it; tokens: UTC midnight


@dataclass(frozen=True)
class Quotas:
    """A key's quotas as its request was checked (the rate-limit headers); None: no such quota,
    or not checked (tokens while the database cannot be reached)."""

    requests: Allowance | None = None
    tokens: Allowance | None = None
