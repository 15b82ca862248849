"""The prompt cache beyond the slots: a prefix whose slot was taken by another prompt is kept in
host RAM and restored, on the real model."""

from __future__ import annotations

from typing import Any

from django.test import AsyncClient
from prometheus_client import REGISTRY

from inference.models import RequestRecord
from tests.conftest import SMOLLM2

RULES = "You are a careful assistant. " + " ".join(f"Rule {n}: answer in at most {n} words." for n in range(1, 40))
QUESTION = [{"role": "system", "content": RULES}, {"role": "user", "content": "Name a colour."}]
OTHER = [{"role": "user", "content": "Tell me about the sea. " * 30}]


async def chat(messages: list[dict[str, str]], **body: Any) -> dict[str, Any]:
    response = await AsyncClient().post(
        "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0, **body},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    return response.json()


def ram_tokens_counted() -> float:
    """/metrics' count of prompt tokens restored from RAM (this process's, from every test)."""
    return REGISTRY.get_sample_value("llamasite_prompt_cache_tokens_total", {"model": SMOLLM2, "tier": "ram"}) or 0.0


def cached(body: dict[str, Any]) -> int:
    return body["usage"]["prompt_tokens_details"]["cached_tokens"]


async def test_a_prefix_that_lost_its_slot_is_restored_from_ram(use_config) -> None:
    use_config(parallel=1, n_ctx=2048)  # one slot: each new prompt takes the last one's cells
    first = await chat(QUESTION)
    await chat(OTHER)
    counted_before = ram_tokens_counted()
    again = await chat(QUESTION)
    assert cached(again) == first["usage"]["prompt_tokens"] - 1  # all but the last token
    assert ram_tokens_counted() - counted_before == cached(again)
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    from_slot = await chat(QUESTION)  # still in the slot this time
    tiers = {
        record.completion_id: (record.cache_tier, record.cached_tokens)
        async for record in RequestRecord.objects.all()
    }
    assert tiers[first["id"]] == ("", 0)
    assert tiers[again["id"]] == ("ram", cached(again))
    assert tiers[from_slot["id"]] == ("slot", cached(from_slot))


async def test_without_a_ram_budget_the_prefix_is_processed_again(use_config) -> None:
    use_config(parallel=1, n_ctx=2048, prompt_cache_mb=0)
    await chat(QUESTION)
    await chat(OTHER)
    assert cached(await chat(QUESTION)) < 64
