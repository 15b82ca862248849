"""Rate-limit headers: a key with quotas sees where they stand on every answer of a generation
endpoint (JSON, stream, error, the 429 itself), as OpenAI sends them (and Anthropic, on
/v1/messages); a key without quotas, or no key, gets none."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from inference.access.quotas import Allowance, Quotas
from inference.models import ApiKey, RequestRecord
from inference.protocol.rate_limits import anthropic_rate_limit_headers, go_duration, openai_rate_limit_headers
from inference.services import keys as key_services
from tests.conftest import HI, SMOLLM2, DaphneServer

OPENAI_NAMES = [
    f"x-ratelimit-{part}-{kind}" for kind in ("requests", "tokens") for part in ("limit", "remaining", "reset")
]


@pytest.mark.parametrize(
    ("seconds", "printed"),
    [
        (0, "0s"),
        (0.012, "12ms"),
        (1, "1s"),
        (59.9996, "1m0s"),
        (360, "6m0s"),
        (61.5, "1m1.5s"),
        (3600, "1h0m0s"),
        (61392.5, "17h3m12.5s"),
    ],
)
def test_resets_are_go_durations_as_openai_sends_them(seconds: float, printed: str) -> None:
    assert go_duration(seconds) == printed


def test_only_the_quotas_a_key_has_get_headers() -> None:
    now = datetime(2026, 12, 2, 7, 0, 0, 250000, tzinfo=UTC)
    requests = Allowance(limit=5, remaining=4, resets_at=now + timedelta(seconds=59.5))
    assert openai_rate_limit_headers(Quotas(requests=requests), now) == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "59.5s",
    }
    tokens = Allowance(limit=1000, remaining=0, resets_at=datetime(2026, 12, 3, tzinfo=UTC))
    anthropic = anthropic_rate_limit_headers(Quotas(tokens=tokens), now)
    assert anthropic == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "16h59m59.75s",
        "anthropic-ratelimit-tokens-limit": "1000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-12-03T00:00:00Z",
    }


async def _create(**options: Any) -> tuple[ApiKey, str]:
    return await sync_to_async(key_services.api_key_create)(**options)


async def post(secret: str | None, path: str = "/v1/chat/completions", **body: Any) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    body = {"model": SMOLLM2, "messages": HI, "max_tokens": 2, "temperature": 0, **body}
    return await AsyncClient().post(path, body, content_type="application/json", headers=headers)


def seconds_of(duration: str) -> float:
    """A Go duration's seconds (the forms go_duration prints)."""
    match = re.fullmatch(r"(\d+)ms|(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s", duration)
    assert match, duration
    milliseconds, hours, minutes, seconds = match.groups()
    if milliseconds:
        return int(milliseconds) / 1000
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


def until_midnight() -> float:
    now = datetime.now(UTC)
    return (datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC) - now).total_seconds()


@pytest.mark.slow
async def test_json_stream_and_429_answers_carry_the_headers_counting_down(use_config) -> None:
    _, secret = await _create(name="metered", requests_per_minute=3, tokens_per_day=100_000)
    first = await post(secret)
    assert first.status_code == 200
    assert [first[name] is not None for name in OPENAI_NAMES] == [True] * 6
    assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-remaining-requests"]) == ("3", "2")
    assert 0 < seconds_of(first["x-ratelimit-reset-requests"]) <= 60  # when its own request leaves the window
    assert (first["x-ratelimit-limit-tokens"], first["x-ratelimit-remaining-tokens"]) == ("100000", "100000")
    assert until_midnight() - 600 < seconds_of(first["x-ratelimit-reset-tokens"]) <= 86400

    streamed = await post(secret, stream=True)
    assert streamed.status_code == 200 and streamed["Content-Type"] == "text/event-stream"
    b"".join([part async for part in streamed.streaming_content])
    assert streamed["x-ratelimit-remaining-requests"] == "1"
    used = first.json()["usage"]["total_tokens"]
    assert streamed["x-ratelimit-remaining-tokens"] == str(100_000 - used)  # the first answer's tokens counted

    failed = await post(secret, model="no-such-model")  # an error after the quota check
    assert failed.status_code == 404 and failed["x-ratelimit-remaining-requests"] == "0"

    refused = await post(secret)
    assert refused.status_code == 429
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert 0 < seconds_of(refused["x-ratelimit-reset-requests"]) <= 60
    assert 0 < int(refused["Retry-After"]) <= 60


async def test_the_token_quota_s_429_says_none_are_left_until_midnight(use_config) -> None:
    key, secret = await _create(name="spent", tokens_per_day=50)
    assert (await post(secret)).status_code == 200
    await RequestRecord.objects.filter(api_key=key.prefix).aupdate(prompt_tokens=60)
    refused = await post(secret)
    assert refused.status_code == 429
    assert (refused["x-ratelimit-limit-tokens"], refused["x-ratelimit-remaining-tokens"]) == ("50", "0")
    assert abs(seconds_of(refused["x-ratelimit-reset-tokens"]) - int(refused["Retry-After"])) <= 1
    assert not refused.has_header("x-ratelimit-limit-requests")  # the key has no requests quota


@pytest.mark.slow
async def test_no_headers_without_quotas_or_without_a_key(use_config) -> None:
    _, secret = await _create(name="unmetered")
    for answer in (await post(secret), await post(None)):
        assert answer.status_code == 200
        assert not [name for name in OPENAI_NAMES if answer.has_header(name)]


@pytest.mark.slow
async def test_messages_carry_anthropic_s_headers_too(use_config) -> None:
    _, secret = await _create(name="claude", requests_per_minute=10, tokens_per_day=1000)
    answer = await post(secret, "/v1/messages", max_tokens=2)
    assert answer.status_code == 200, answer.content
    assert (answer["anthropic-ratelimit-requests-limit"], answer["anthropic-ratelimit-requests-remaining"]) == (
        "10",
        "9",
    )
    reset = datetime.fromisoformat(answer["anthropic-ratelimit-requests-reset"])
    assert answer["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert timedelta(0) < reset - datetime.now(UTC) <= timedelta(seconds=61)
    tokens_reset = datetime.fromisoformat(answer["anthropic-ratelimit-tokens-reset"])
    assert tokens_reset.time() == datetime.min.time() and tokens_reset > datetime.now(UTC)
    assert answer["x-ratelimit-remaining-requests"] == "9"


def test_the_openai_sdk_sees_them(daphne_server: DaphneServer) -> None:
    created = daphne_server.manage("apikey", "create", "sdk-metered", "--rpm", "100", "--tokens-per-day", "100000")
    assert created.returncode == 0, created.stderr
    sdk = openai.OpenAI(base_url=f"{daphne_server.url}/v1", api_key=created.stdout.strip(), max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(model=SMOLLM2, messages=HI, max_tokens=2, temperature=0)
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    assert raw.parse().choices[0].message.content is not None
    again = sdk.chat.completions.with_raw_response.create(model=SMOLLM2, messages=HI, max_tokens=2, temperature=0)
    assert again.headers["x-ratelimit-remaining-requests"] == "98"
    assert int(again.headers["x-ratelimit-remaining-tokens"]) < 100000
