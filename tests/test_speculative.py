"""Speculative decoding by prompt lookup (model_manager.speculative), against the real model: the
same requests give the same answers with drafting and without, and records and metrics count
the drafts.

Each comparison runs the same requests, in the same order, on a freshly loaded model with
`speculative: "off"`, then with `"ngram"`. Alone, a request's output is identical: each token is
one draw of its own sampler from the same logits. In a batch, llama.cpp's rounding depends on
what decodes beside a sequence (docs/performance.md, Batching), and drafting changes
that, so there texts agree up to the first near-tie.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families

from inference.models import RequestRecord
from inference.records.recording import RequestRecording
from inference.runtime.drafting import LONGEST_DRAFT, LONGEST_DRAFT_BESIDE_OTHERS, AnswerMemory, NgramDrafter
from inference.runtime.engine import GenerationEngine
from inference.runtime.jobs import ChatJob, ChatMessage, Finished, JobEvent, Sampling, TextDelta, TokenLogprob
from inference.runtime.settings import LoadSettings
from tests.chat_prompts import smollm2_chat
from tests.conftest import SMOLLM2

FRUIT = "apples, pears, plums, cherries, grapes, lemons, limes, oranges, peaches, apricots, figs, dates, melons"
REPEAT_LIST = [{"role": "user", "content": f"Repeat this list exactly: {FRUIT}."}]
FUNCTION = '''def total_price(items, discount):
    """The price of the items after the discount, in cents."""
    total = 0
    for item in items:
        if item.quantity <= 0:
            raise ValueError(f"{item.name}: quantity must be positive")
        total += item.price * item.quantity
    if discount:
        total -= total * discount // 100
    return total
'''
EDIT_CODE = [{"role": "user", "content": f"Rename `items` to `products` in this function:\n\n```python\n{FUNCTION}```"}]
STORY = [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
}


async def answers_with_and_without_drafting(use_config: Callable[..., Path], *bodies: dict) -> dict[str, list]:
    """Each body's answer and record, with speculative "off" and then "ngram" (each on a model
    loaded afresh, with no prompt cache on disk from the other; the bodies sent one after the other)."""
    results: dict[str, list] = {}
    for mode in ("off", "ngram"):
        use_config(speculative=mode, prompt_cache_disk_mb=0)
        answers = []
        for body in bodies:
            response = await AsyncClient().post(
                "/v1/chat/completions", {"model": SMOLLM2, **body}, content_type="application/json"
            )
            assert response.status_code == 200, response.content
            answer = response.json()
            record = await RequestRecord.objects.aget(completion_id=answer["id"])
            answers.append((answer, record))
        results[mode] = answers
    return results


def outputs(answer: dict) -> list[tuple[str, str]]:
    return [(choice["message"]["content"], choice["finish_reason"]) for choice in answer["choices"]]


def assert_same_answers(results: dict[str, list]) -> None:
    for (plain, plain_record), (drafted, record) in zip(results["off"], results["ngram"], strict=True):
        assert outputs(drafted) == outputs(plain)
        assert drafted["usage"] == plain["usage"]
        assert (plain_record.draft_tokens_proposed, plain_record.draft_tokens_accepted) == (0, 0)
        assert 0 <= record.draft_tokens_accepted <= record.draft_tokens_proposed


async def draft_token_counts() -> dict[str, float]:
    """The /metrics counters of draft tokens for the model, by kind."""
    text = (await AsyncClient().get("/metrics")).content.decode()
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llamasite_draft_tokens_total" and sample.labels["model"] == SMOLLM2
    }


@pytest.mark.slow
async def test_greedy_answers_are_the_same_and_the_drafts_are_counted(use_config, admin_client: Client) -> None:
    before = await draft_token_counts()
    results = await answers_with_and_without_drafting(
        use_config,
        {"messages": REPEAT_LIST, "max_tokens": 80, "temperature": 0},
        {"messages": EDIT_CODE, "max_tokens": 160, "temperature": 0},
        {"messages": STORY, "max_tokens": 80, "temperature": 0},
    )
    assert_same_answers(results)
    records = [record for _, record in results["ngram"]]
    copied, edited, _ = records
    assert "apples, pears, plums, cherries, grapes" in results["ngram"][0][0]["choices"][0]["message"]["content"]
    # most of what it copies comes from drafts (a long draft overshoots where the copy ends)
    assert copied.draft_tokens_accepted > max(10, copied.draft_tokens_proposed / 3)
    assert edited.draft_tokens_accepted > 10
    after = await draft_token_counts()
    for kind, column in (("proposed", "draft_tokens_proposed"), ("accepted", "draft_tokens_accepted")):
        assert after[kind] - before.get(kind, 0) == sum(getattr(record, column) for record in records)
    page = (
        await sync_to_async(admin_client.get)(f"/admin/inference/requestrecord/{copied.pk}/change/")
    ).content.decode()
    assert "Draft tokens proposed" in page and "Draft tokens accepted" in page


@pytest.mark.slow
async def test_an_answer_asked_for_again_is_drafted_from_the_first(use_config) -> None:
    story = {"messages": STORY, "max_tokens": 80, "temperature": 0}
    results = await answers_with_and_without_drafting(use_config, story, story)
    assert_same_answers(results)
    (first, first_record), (again, record) = results["ngram"]
    assert outputs(again) == outputs(first)
    assert (
        record.draft_tokens_accepted > again["usage"]["completion_tokens"] * 3 / 4 > first_record.draft_tokens_accepted
    )


@pytest.mark.slow
async def test_a_seeded_sampled_request_gives_the_same_text(use_config) -> None:
    results = await answers_with_and_without_drafting(
        use_config,
        {"messages": REPEAT_LIST, "max_tokens": 60, "temperature": 0.8, "seed": 11},
        {"messages": EDIT_CODE, "max_tokens": 100, "temperature": 0.8, "seed": 12},
    )
    assert_same_answers(results)
    # Not a property (whether drafts come true depends on the draws): a check that this test
    # still exercises drafting; if not, choose other seeds.
    assert sum(record.draft_tokens_accepted for _, record in results["ngram"]) > 0


async def test_the_record_sums_the_drafts_of_every_choice(use_config) -> None:
    async def events() -> AsyncIterator[JobEvent]:
        yield TextDelta("apples", 1, index=0)
        yield TextDelta("pears", 1, index=1)
        yield Finished("length", 9, 6, index=1, draft_proposed=4, draft_accepted=1)
        yield Finished("stop", 9, 7, index=0, draft_proposed=5, draft_accepted=3)

    recording = RequestRecording(endpoint="/v1/chat/completions")
    recording.draft.model = SMOLLM2
    assert len([event async for event in recording.events(events(), choices=2)]) == 4
    record = await RequestRecord.objects.aget()
    assert (record.completion_tokens, record.draft_tokens_proposed, record.draft_tokens_accepted) == (13, 9, 4)


@pytest.mark.slow
async def test_a_json_schema_answer_is_still_valid(use_config) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "people", "schema": {"type": "array", "items": PERSON}}}
    people = "Ann, 31, from Oslo; Bob, 45, from Lima; Cleo, 27, from Rome; Dan, 52, from Kyiv"
    request = [{"role": "user", "content": f"List these people as JSON with name, age and city: {people}."}]
    results = await answers_with_and_without_drafting(
        use_config, {"messages": request, "response_format": schema, "max_tokens": 200, "temperature": 0}
    )
    assert_same_answers(results)
    [(answer, record)] = results["ngram"]
    content, finish_reason = outputs(answer)[0]
    assert finish_reason == "stop"
    jsonschema.validate(json.loads(content), {"type": "array", "items": PERSON})
    assert record.draft_tokens_accepted > 0  # drafts came true inside the grammar


@pytest.mark.slow
async def test_max_tokens_and_stop_sequences_end_it_as_without_drafting(use_config) -> None:
    """Both fall in the middle of a draft that goes on past them."""
    results = await answers_with_and_without_drafting(
        use_config,
        {"messages": REPEAT_LIST, "max_tokens": 60, "temperature": 0},
        {"messages": REPEAT_LIST, "max_tokens": 13, "temperature": 0},
        {"messages": REPEAT_LIST, "max_tokens": 60, "temperature": 0, "stop": ["lemons"]},
    )
    assert_same_answers(results)
    (whole, _), (cut, cut_record), (stopped, stopped_record) = results["ngram"]
    assert outputs(cut)[0][1] == "length" and cut["usage"]["completion_tokens"] == 13
    assert whole["choices"][0]["message"]["content"].startswith(outputs(cut)[0][0])
    content, finish_reason = outputs(stopped)[0]
    assert finish_reason == "stop" and content.endswith("grapes, ") and "lemons" not in content
    assert cut_record.draft_tokens_accepted > 0 and stopped_record.draft_tokens_accepted > 0


Choices = dict[tuple[str, int], tuple[list[TokenLogprob], Finished]]


def generate_together(model: Path, speculative: str, jobs: dict[str, ChatJob]) -> Choices:
    """Start every job before the first step (so both runs batch them alike) and step until all
    are done: each choice's tokens with their top logprobs, and its Finished."""
    settings = LoadSettings(
        n_ctx=4096, n_gpu_layers=0, n_threads=1, n_threads_batch=2, parallel=5, speculative=speculative
    )
    engine = GenerationEngine("smollm2", model, settings)
    tokens: dict[tuple[str, int], list[TokenLogprob]] = {}
    finished: dict[tuple[str, int], Finished] = {}
    try:
        for key, job in jobs.items():
            assert engine.start(key, engine.prepare(job), lambda: False)
        while engine.running:
            for key, event in engine.step():
                if isinstance(event, TextDelta):
                    tokens.setdefault((key, event.index), []).extend(event.logprobs)
                elif isinstance(event, Finished):
                    finished[key, event.index] = event
    finally:
        engine.close()
    return {choice: (tokens.get(choice, []), finished[choice]) for choice in finished}


# Measured here: where the greedy texts of a batch part, with drafting or without, the two runs'
# log-probabilities of the same token differ by up to 0.2; the top two were within 0.11. A tie may
# be three-way (drafting: " Captain" -2.940, " James" -2.941; without: " James" -2.941, " Barn"
# -3.059, " Captain" -3.103): the top 5 are compared.
NEAR_TIE = 0.5


@pytest.mark.slow
def test_in_a_batch_the_texts_agree_up_to_a_near_tie(smollm2_file: Path) -> None:
    """Four requests decoded together, one of them with n = 2 (its choices decode side by side)."""

    def job(messages: list[dict[str, Any]], n: int = 1) -> ChatJob:
        chat = tuple(ChatMessage(message["role"], message["content"]) for message in messages)
        return smollm2_chat(chat, max_tokens=100, sampling=Sampling(temperature=0), logprobs=5, n=n)

    jobs = {
        "list": job(REPEAT_LIST, n=2),
        "code": job(EDIT_CODE),
        "story": job(STORY),
        "hello": job([{"role": "user", "content": "Hi!"}]),
    }
    plain = generate_together(smollm2_file, "off", jobs)
    drafted = generate_together(smollm2_file, "ngram", jobs)
    assert drafted.keys() == plain.keys() and len(drafted) == 5
    for choice in plain:
        ours, theirs = drafted[choice][0], plain[choice][0]
        parted = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a.token != b.token), None)
        if parted is None:  # the same all along
            assert len(ours) == len(theirs) and drafted[choice][1].finish_reason == plain[choice][1].finish_reason
            continue
        for chosen, other in ((ours[parted], theirs[parted]), (theirs[parted], ours[parted])):
            rival = next(top for top in chosen.top if top.token == other.token)
            assert chosen.logprob - rival.logprob < NEAR_TIE, f"{choice}: parted at token {parted} without a near-tie"
    assert all(drafted["list", index][1].draft_accepted > 5 for index in (0, 1))
    assert drafted["code", 0][1].draft_accepted > 5


def test_a_choice_drafts_only_where_it_copies() -> None:
    """On an 8-token match, not a 3-token one, unless its drafts came true."""
    coincidence = [1, 2, 3, 4, 5, 6, 7, 8, 9, 2, 3]  # then 4: only "2 3 4" occurred before
    assert NgramDrafter().propose(coincidence, 4, most=8) == []
    assert NgramDrafter().propose(coincidence, 4, most=8, beside_others=True) == []
    copying = [*range(1, 13), *range(1, 8)]  # then 8: "1 … 8" occurred before
    drafter = NgramDrafter()
    assert drafter.propose(copying, 8, most=8) == [9, 10]
    drafter.verified(2, 2)  # they came true: the next draft is twice as long, and a 3-token match will do
    assert drafter.propose([*copying, 8, 9, 10], 11, most=8) == [12, 1, 2, 3]
    drafter.verified(4, 4)
    # "2 3 4" matches 3 tokens back ("1 2 3 4" before, "77 2 3 4" now): 3 tokens, not 8
    assert drafter.propose([*copying, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 77, 2, 3], 4, most=8) == [5, 77, 2]


def grown(drafter: NgramDrafter) -> NgramDrafter:
    """`drafter` after drafts that all came true, up to the longest."""
    for length in (2, 4, 8, 16):
        drafter.verified(length, length)  # every draft came true: the next one is twice as long
    return drafter


def test_a_loop_is_drafted_past_the_end_of_the_sequence() -> None:
    loop = [60, 61, 62, 63, 64]
    looping = [1, 2, 3, *loop * 8, 60, 61]  # then 62: the loop again
    draft = grown(NgramDrafter()).propose(looping, 62, most=64)
    assert draft == [*loop[3:], *loop * 7][:LONGEST_DRAFT]
    # no longer than the match: 3 periods and 3 tokens seen
    assert grown(NgramDrafter()).propose([1, 2, 3, *loop * 3, 60, 61], 62, most=64) == [*loop[3:], *loop * 3][:13]
    # a short match that runs into the end stops there, where next_token follows
    short = [1, 2, 3, 4, 9, 2, 3]  # then 4
    assert grown(NgramDrafter()).propose(short, 4, most=64) == [9, 2, 3]


def test_a_long_match_drafts_half_its_length_at_once() -> None:
    """After a draft cut short (an edit in a copy), the copy goes on: its 21-token match drafts 10."""
    copying = [*range(100, 140), 1, *range(100, 120)]  # then 120, as the first copy went on
    drafter = grown(NgramDrafter())
    drafter.verified(32, 1)  # cut short: the adaptive length is down to 2
    assert drafter.propose(copying, 120, most=64) == list(range(121, 131))


def test_a_pattern_within_a_loop_does_not_hide_the_loop() -> None:
    """The last 3 tokens last occurred 3 back (within the loop's period of 9); the last 8, one period
    back: the draft follows the period, which matches more."""
    period = [70, 71, 72, 73, 80, 81, 80, 81, 80]
    looping = [1, 2, *period * 3, 70, 71, 72, 73, 80, 81]  # then 80
    draft = grown(NgramDrafter()).propose(looping, 80, most=12)
    assert draft == [81, 80, 70, 71, 72, 73, 80, 81, 80, 81, 80, 70]


def test_beside_other_sequences_drafts_are_shorter() -> None:
    copying = [*range(1, 80), *range(1, 40)]  # then 40, and what followed it
    drafter = grown(NgramDrafter())
    assert len(drafter.propose(copying, 40, most=64)) == LONGEST_DRAFT
    assert len(drafter.propose(copying, 40, most=64, beside_others=True)) == LONGEST_DRAFT_BESIDE_OTHERS


PROMPT_TAIL = [40, 41, 42, 43, 44, 45, 46, 47]


def test_an_answer_given_before_is_drafted_from_the_models_memory() -> None:
    memory = AnswerMemory()
    memory.remember([*PROMPT_TAIL, *range(1, 10)], answer_start=len(PROMPT_TAIL))
    asked_again = [*PROMPT_TAIL, 1, 2]  # then 3: its own sequence never held "1 2 3" before
    assert NgramDrafter().propose(asked_again, 3, most=8) == []
    assert NgramDrafter().propose(asked_again, 3, most=8, memory=memory) == [4, 5]
    # a match of MEMORY_MATCH tokens is a copy: drafted beside other sequences too
    assert NgramDrafter().propose(asked_again, 3, most=8, beside_others=True, memory=memory) == [4, 5]


def test_of_the_own_sequence_and_the_memory_the_longer_match_is_copied() -> None:
    memory = AnswerMemory()
    memory.remember([*PROMPT_TAIL, *range(1, 10)], answer_start=len(PROMPT_TAIL))
    tokens = [*PROMPT_TAIL[3:], 1, 2, 3, 99, *PROMPT_TAIL, 1, 2]  # then 3: on to 99 here, to 4 in the memory
    assert NgramDrafter().propose(tokens, 3, most=8) == [99, 40]
    assert NgramDrafter().propose(tokens, 3, most=8, memory=memory) == [4, 5]
    copied_longer = [*PROMPT_TAIL, 1, 2, 3, 99, *PROMPT_TAIL, 1, 2]
    assert NgramDrafter().propose(copied_longer, 3, most=8, memory=memory) == [99, 40]


def test_the_memory_forgets_its_oldest_answers_past_its_capacity() -> None:
    memory = AnswerMemory(capacity=30)
    memory.remember([*range(1, 9), *range(9, 13)], answer_start=7)  # 12 tokens, with its prompt's last 7
    memory.remember([*range(1, 9), 50, 51, 52, 53], answer_start=7)  # the same first 8, then others
    memory.remember(list(range(60, 72)), answer_start=7)  # 36 tokens in all: the first answer goes
    assert memory.recall(tuple(range(2, 10))) is None
    answer, position = memory.recall(tuple(range(1, 9))) or ([], 0)
    assert answer[position] == 50  # the newer answer's, which remains
    answer, position = memory.recall(tuple(range(60, 68))) or ([], 0)
    assert answer[position] == 68
    memory.remember([1, 2, 3, 4], answer_start=3)  # too short to draft from: not kept
    assert memory.recall((1, 2, 3, 4)) is None
