"""Tokens per day hold while requests run: a request claims what it may use (its prompt, and
its output to max_tokens or the context's end) of what its key has left, its output is cut to
what it got, and requests in flight together never claim more than is left."""

from __future__ import annotations

import random
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.access import quotas
from inference.access.quotas import TokenLedger
from inference.models import ApiKey, RequestRecord
from inference.services import keys as key_services
from tests.conftest import SMOLLM2, validate_openai

HELLO = [{"role": "user", "content": "Tell me a long story about a cat."}]


async def chat(secret: str, **body: Any) -> Any:
    body = {"model": SMOLLM2, "messages": HELLO, "max_tokens": 60, "ignore_eos": True, **body}
    return await AsyncClient().post(
        "/v1/chat/completions", body, content_type="application/json", headers={"Authorization": f"Bearer {secret}"}
    )


async def prompt_tokens() -> int:
    """How many tokens HELLO's prompt is (a request of a key without quotas)."""
    _, secret = await sync_to_async(key_services.api_key_create)(name="free")
    return (await chat(secret, max_tokens=1)).json()["usage"]["prompt_tokens"]


async def key_with(tokens_per_day: int) -> tuple[ApiKey, str]:
    return await sync_to_async(key_services.api_key_create)(name="thrifty", tokens_per_day=tokens_per_day)


@pytest.mark.slow
async def test_a_request_stops_where_its_keys_tokens_end(use_config) -> None:
    prompt = await prompt_tokens()
    key, secret = await key_with(prompt + 5)
    response = await chat(secret)  # asks for 60
    assert response.status_code == 200, response.content
    usage, choice = response.json()["usage"], response.json()["choices"][0]
    assert usage["completion_tokens"] == 5 and choice["finish_reason"] == "length"
    assert response["x-ratelimit-remaining-tokens"] == str(prompt + 5)  # as it was checked
    refused = await chat(secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
    records = [record async for record in RequestRecord.objects.filter(api_key=key.prefix)]
    assert sum(record.prompt_tokens + record.completion_tokens for record in records) == prompt + 5


@pytest.mark.slow
async def test_a_prompt_longer_than_what_is_left_is_refused_before_it_runs(use_config) -> None:
    prompt = await prompt_tokens()
    key, secret = await key_with(prompt - 3)
    response = await chat(secret)
    assert response.status_code == 429, response.content
    validate_openai("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded" and f"({prompt} tokens)" in error["message"]
    assert 0 < int(response["Retry-After"]) <= 86400
    assert response["x-ratelimit-limit-tokens"] == str(prompt - 3)  # the key's quota headers, as for any 429
    record = await RequestRecord.objects.aget(api_key=key.prefix)
    assert (record.http_status, record.prompt_tokens, record.completion_tokens) == (429, 0, 0)


@pytest.mark.slow
async def test_each_choice_gets_an_equal_share(use_config) -> None:
    prompt = await prompt_tokens()
    _, secret = await key_with(prompt + 9)
    body = (await chat(secret, n=2)).json()
    assert body["usage"]["completion_tokens"] == 8  # 4 each: 9 does not split in two
    assert {choice["finish_reason"] for choice in body["choices"]} == {"length"}


@pytest.mark.slow
async def test_count_tokens_claims_nothing(use_config) -> None:
    prompt = await prompt_tokens()
    key, secret = await key_with(prompt + 1)
    counted = await AsyncClient().post(
        "/v1/messages/count_tokens",
        {"model": SMOLLM2, "messages": HELLO},
        content_type="application/json",
        headers={"x-api-key": secret},
    )
    assert counted.status_code == 200
    assert quotas.token_ledger.held(key.prefix) == 0


# The ledger under any interleaving: requests check (a snapshot, then the records, then their
# window), claim, and have their record written (the claim moves from held to the records) in
# any order; what they were granted never adds up to more than the limit.
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    limit=st.integers(1, 500),
    requests=st.lists(st.tuples(st.integers(1, 200), st.integers(1, 50)), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_requests_in_flight_never_claim_more_than_is_left(
    limit: int, requests: list[tuple[int, int]], seed: int
) -> None:
    ledger, recorded, granted = TokenLedger(), [0], []
    steps = {index: ["snapshot", "read", "window", "claim", "record"] for index in range(len(requests))}
    state: dict[int, dict[str, Any]] = {index: {} for index in steps}
    order = random.Random(seed)
    while steps:
        index = order.choice(sorted(steps))
        step, mine = steps[index].pop(0), state[index]
        wanted, least = max(requests[index]), min(requests[index])
        if step == "snapshot":
            mine["before"] = ledger.snapshot("key")
        elif step == "read":
            mine["used"] = recorded[0]
        elif step == "window":
            mine["window"] = ledger.window("key", limit, mine["used"], mine["before"])
            if mine["window"] is None:
                del steps[index]  # a 429
                continue
        elif step == "claim":
            mine["granted"] = mine["window"].claim(wanted, least)
            assert mine["granted"] == 0 or least <= mine["granted"] <= wanted
            granted.append(mine["granted"])
        else:
            recorded[0] += mine["granted"]
            mine["window"].release()
            mine["window"].release()  # once only
        if not steps[index]:
            del steps[index]
        assert sum(granted) <= limit
    assert ledger.held("key") == 0


def test_a_window_is_shared_by_its_own_jobs() -> None:
    ledger = TokenLedger()
    window = ledger.window("key", 100, 0, ledger.snapshot("key"))
    assert window is not None
    assert window.claim(60, 10) == 60 and window.claim(60, 10) == 40 and window.claim(60, 10) == 0
    assert ledger.held("key") == 100
    window.release()
    assert ledger.held("key") == 0 and window.claim(1, 1) == 0  # released: its request is over


@pytest.mark.parametrize("used", [100, 150])
def test_nothing_left_is_no_window(used: int) -> None:
    ledger = TokenLedger()
    assert ledger.window("key", 100, used, ledger.snapshot("key")) is None
