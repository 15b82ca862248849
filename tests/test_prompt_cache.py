"""The prompt cache beyond the slots, on the real model: a prefix whose slot was taken by another
prompt is kept in host RAM and restored; an unloading model stores its prefixes on disk for its
next load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient
from prometheus_client import REGISTRY

from inference.models import RequestRecord
from inference.runtime.lifecycle import LoadReason
from inference.runtime.prompt_cache import PromptCache
from inference.services import models as model_services
from tests.conftest import SMOLLM2

# Each test processes a long prompt on the real model several times.
pytestmark = pytest.mark.slow

RULES = "You are a careful assistant. " + " ".join(f"Rule {n}: answer in at most {n} words." for n in range(1, 40))
QUESTION = [{"role": "system", "content": RULES}, {"role": "user", "content": "Name a colour."}]
OTHER = [{"role": "user", "content": "Tell me about the sea. " * 30}]


async def chat(messages: list[dict[str, str]], **body: Any) -> dict[str, Any]:
    response = await AsyncClient().post(
        "/v1/chat/completions",
        {"messages": messages, "max_tokens": 8, "temperature": 0, **body},
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
        record.completion_id: (record.cache_tier, record.cached_tokens) async for record in RequestRecord.objects.all()
    }
    assert tiers[first["id"]] == ("", 0)
    assert tiers[again["id"]] == ("ram", cached(again))
    assert tiers[from_slot["id"]] == ("slot", cached(from_slot))


async def test_an_unloaded_model_lets_go_of_its_cached_states(use_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Freed at the unload, not whenever the collector finds the unloaded model's objects (they
    hold each other) — up to prompt_cache_mb a model."""
    caches: list[PromptCache] = []
    created = PromptCache.__init__

    def recorded(self: PromptCache, *args: Any, **kwargs: Any) -> None:
        created(self, *args, **kwargs)
        caches.append(self)

    monkeypatch.setattr(PromptCache, "__init__", recorded)
    use_config(parallel=1, n_ctx=2048)
    await chat(QUESTION)
    await chat(OTHER)  # QUESTION's prefix goes to RAM
    assert len(caches) == 1 and caches[0].size_bytes > 0
    await model_services.model_unload(model=SMOLLM2, reason=LoadReason.ADMIN_API)
    assert (len(caches[0]), caches[0].size_bytes) == (0, 0)


async def test_without_a_ram_budget_the_prefix_is_processed_again(use_config) -> None:
    use_config(parallel=1, n_ctx=2048, prompt_cache_mb=0)
    await chat(QUESTION)
    await chat(OTHER)
    assert cached(await chat(QUESTION)) < 64


async def unload() -> None:
    assert (await model_services.model_unload(model=SMOLLM2, reason=LoadReason.ADMIN_API))["unloaded"] == [SMOLLM2]


def stored_files(config: Path) -> list[Path]:
    return sorted((config.parent / "prompt-cache").glob("*/*.prefix"))


async def test_prefixes_outlive_an_unload_on_disk(use_config) -> None:
    config = use_config(n_ctx=2048)
    first = await chat(QUESTION)
    await unload()
    assert len(stored_files(config)) == 1
    again = await chat(QUESTION)  # the model loads afresh: its slots are empty
    assert cached(again) == first["usage"]["prompt_tokens"] - 1
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    record = await RequestRecord.objects.aget(completion_id=again["id"])
    assert (record.cache_tier, record.cached_tokens) == ("disk", cached(again))


async def test_a_reconfigured_model_never_restores_a_stale_state(use_config) -> None:
    config = use_config(n_ctx=2048)
    await chat(QUESTION)
    await unload()
    (stale,) = stored_files(config)
    use_config(n_ctx=1024)  # another KV layout: the stored state is not for it
    assert cached(await chat(QUESTION)) == 0
    assert not stale.exists() and not stale.parent.exists()


async def test_unreadable_files_are_ignored_and_removed(use_config, caplog: pytest.LogCaptureFixture) -> None:
    config = use_config(n_ctx=2048)
    await chat(QUESTION)
    await unload()
    (file,) = stored_files(config)
    file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])  # torn: the header and half the state
    torn = await chat(QUESTION)
    assert torn["choices"][0]["message"]["content"] and cached(torn) == 0
    assert not file.exists()  # llama.cpp refused it: it is not tried again
    await unload()
    (file,) = stored_files(config)
    file.write_bytes(b"not ours")
    assert cached(await chat(QUESTION)) == 0
    assert not file.exists() and "unreadable prompt cache file" in caplog.text


async def test_the_directory_stays_within_its_budget(use_config) -> None:
    config = use_config(n_ctx=2048, prompt_cache_disk_mb=1)  # smaller than one prefix's state
    await chat(QUESTION)
    await unload()
    assert stored_files(config) == []
