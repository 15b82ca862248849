"""Rate-limit headers: where a key's quotas stand, as OpenAI and Anthropic send them.

OpenAI's (every generation endpoint): `x-ratelimit-{limit,remaining,reset}-requests` for
requests per minute and `-tokens` for the daily token quota, the reset a Go duration ("1s",
"6m0s", "17h3m12.5s"). Anthropic's (/v1/messages, besides OpenAI's):
`anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, the reset an RFC 3339 time.
Only the quotas a key has (and that were checked) get headers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference.access.quotas import Allowance, Quotas


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration prints it, to the millisecond: "0s", "12ms", "1s",
    "6m0s", "17h3m12.5s"."""
    milliseconds = max(0, round(seconds * 1000))
    if milliseconds < 1000:
        return f"{milliseconds}ms" if milliseconds else "0s"
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


def _each(quotas: Quotas) -> list[tuple[str, Allowance]]:
    return [
        (kind, allowance) for kind, allowance in (("requests", quotas.requests), ("tokens", quotas.tokens)) if allowance
    ]


def openai_rate_limit_headers(quotas: Quotas, now: datetime | None = None) -> dict[str, str]:
    now = now or datetime.now(UTC)
    headers = {}
    for kind, allowance in _each(quotas):
        headers[f"x-ratelimit-limit-{kind}"] = str(allowance.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(allowance.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = go_duration((allowance.resets_at - now).total_seconds())
    return headers


def anthropic_rate_limit_headers(quotas: Quotas, now: datetime | None = None) -> dict[str, str]:
    """Anthropic's headers, and OpenAI's beside them (for tools that read only those)."""
    headers = openai_rate_limit_headers(quotas, now)
    for kind, allowance in _each(quotas):
        headers[f"anthropic-ratelimit-{kind}-limit"] = str(allowance.limit)
        headers[f"anthropic-ratelimit-{kind}-remaining"] = str(allowance.remaining)
        # to the whole second, up: a client that waits until then is not refused
        reset = (allowance.resets_at.astimezone(UTC) + timedelta(microseconds=999_999)).replace(microsecond=0)
        headers[f"anthropic-ratelimit-{kind}-reset"] = reset.isoformat().replace("+00:00", "Z")
    return headers
