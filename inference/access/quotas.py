"""A key's quotas as one request found them (what the rate-limit headers say), the 429 that
carries them, and the tokens its requests in flight have claimed of its tokens per day."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from inference.errors import RetryLater

QUOTA_WARNING_SHARE = 0.8  # of tokens_per_day: a key past it is logged (once a day) and shown on the dashboard


@dataclass(frozen=True)
class Allowance:
    """One quota of a key as a request found it: its limit, what is left, when it is whole."""

    limit: int
    remaining: int
    resets_at: datetime  # requests: when the oldest request in the window leaves it; tokens: UTC midnight


@dataclass(frozen=True)
class Quotas:
    """A key's quotas as its request was checked (the rate-limit headers); None: no such quota,
    or not checked (tokens while the database cannot be reached). `window`: the request's share
    of the tokens left, which its jobs claim from."""

    requests: Allowance | None = None
    tokens: Allowance | None = None
    window: TokenWindow | None = field(default=None, compare=False)


def seconds_to_midnight(now: datetime | None = None) -> int:
    """Seconds until tokens per day start again (UTC midnight), rounded up."""
    now = now or datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return math.ceil((midnight - now).total_seconds())


class TokenLedger:
    """The tokens that requests in flight have claimed, per key, in this process: what the key's
    records do not count yet. Any thread (claims come from the models' workers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # claimed by requests whose records are not written yet
        self._claimed: dict[str, int] = {}  # claimed ever (only grows): what a window sees others take

    def snapshot(self, key: str) -> LedgerSnapshot:
        """Where `key` stands here, taken before its records are read: a claim released after
        this (its record written meanwhile) is then counted twice, never missed."""
        with self._lock:
            return LedgerSnapshot(self._held.get(key, 0), self._claimed.get(key, 0))

    def window(self, key: str, limit: int, used: int, before: LedgerSnapshot) -> TokenWindow | None:
        """What a request of `key` may spend, its records having counted `used` of `limit`
        today (read after `before`); None if nothing is left."""
        left = limit - used - before.held
        return TokenWindow(self, key, left, before.claimed) if left > 0 else None

    def held(self, key: str) -> int:
        with self._lock:
            return self._held.get(key, 0)


@dataclass(frozen=True)
class LedgerSnapshot:
    held: int
    claimed: int


class TokenWindow:
    """One request's share of its key's tokens for today: at most what was left when it was
    checked, less what other requests have claimed since. Its jobs claim from it once their
    prompts are known (`claim`); the claims are held until the request's record is written
    (`release`), and counted from there."""

    def __init__(self, ledger: TokenLedger, key: str, left: int, claimed_before: int) -> None:
        self._ledger, self._key = ledger, key
        self.left, self._claimed_before = left, claimed_before
        self.claimed = 0
        self._released = False

    def claim(self, wanted: int, least: int) -> int:
        """Claim up to `wanted` tokens, at least `least`: the tokens granted, or 0 (and nothing
        claimed) if fewer than `least` are left."""
        ledger = self._ledger
        with ledger._lock:
            others = ledger._claimed.get(self._key, 0) - self._claimed_before - self.claimed
            granted = min(wanted, self.left - others - self.claimed)
            if granted < least or self._released:
                return 0
            self.claimed += granted
            ledger._claimed[self._key] = ledger._claimed.get(self._key, 0) + granted
            ledger._held[self._key] = ledger._held.get(self._key, 0) + granted
            return granted

    def release(self) -> None:
        """The request's record is written (or will not be): its claims stop being held. Once."""
        ledger = self._ledger
        with ledger._lock:
            if self._released:
                return
            self._released = True
            held = ledger._held.get(self._key, 0) - self.claimed
            if held > 0:
                ledger._held[self._key] = held
            else:
                ledger._held.pop(self._key, None)


class QuotaExceeded(RetryLater):
    status = 429
    type = "rate_limit_error"
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int, quotas: Quotas | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.quotas = quotas  # where the key's quotas stand: the 429's rate-limit headers
