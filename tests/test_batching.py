"""Continuous batching in the engine, with the real model: slots, chunked prompts, the shared
KV cache, the prompt cache, cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from inference.runtime.engine import GenerationEngine
from inference.runtime.jobs import ChatJob, ChatMessage, Finished, PromptAccepted, Sampling, TextDelta
from inference.runtime.scheduler import PREFILL_CHUNK_WHILE_GENERATING
from inference.runtime.settings import LoadSettings
from tests.chat_prompts import smollm2_chat

# Real-model batches of several requests, each test a few seconds.
pytestmark = pytest.mark.slow

GREEDY = Sampling(temperature=0)


def chat(text: str, max_tokens: int = 16, ignore_eos: bool = True) -> ChatJob:
    return smollm2_chat([ChatMessage("user", text)], max_tokens=max_tokens, sampling=GREEDY, ignore_eos=ignore_eos)


@pytest.fixture
def make_engine(smollm2_file: Path) -> Iterator:
    engines: list[GenerationEngine] = []

    def make(parallel: int = 4, n_ctx: int = 4096, n_batch: int = 512) -> GenerationEngine:
        settings = LoadSettings(
            n_ctx=n_ctx, n_gpu_layers=0, n_threads=1, n_threads_batch=2, parallel=parallel, n_batch=n_batch
        )
        engine = GenerationEngine("smollm2", smollm2_file, settings)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def run_all(engine: GenerationEngine, jobs: dict[str, ChatJob]) -> dict[str, tuple[str, Finished, PromptAccepted]]:
    """Start every job (as slots allow) and step until all are done: text, Finished, PromptAccepted."""
    texts = {key: "" for key in jobs}
    results: dict = {}
    accepted: dict = {}
    waiting = list(jobs.items())
    while waiting or engine.running:
        while waiting and engine.free_slots:
            key, job = waiting[0]
            started = engine.start(key, engine.prepare(job), lambda: False)
            if started is None:
                break
            accepted[key] = started
            waiting.pop(0)
        for key, event in engine.step():
            if isinstance(event, TextDelta):
                texts[key] += event.text
            elif isinstance(event, Finished):
                results[key] = (texts[key], event, accepted[key])
    return results


def test_alone_the_greedy_text_is_the_same_with_one_slot_or_four(make_engine) -> None:
    job = chat("Write a poem about the sea.", max_tokens=48)
    one = run_all(make_engine(parallel=1), {"a": job})["a"]
    four = run_all(make_engine(parallel=4), {"a": job})["a"]
    assert one[0] == four[0] and one[1].completion_tokens == 48


def test_more_requests_than_n_batch_generate_together(make_engine) -> None:
    """Each generating request adds a token to every step's batch: with parallel 8 and n_batch 4
    the batch was written past its end and the process crashed."""
    engine = make_engine(parallel=8, n_batch=4)
    results = run_all(engine, {key: chat(f"Say something about {key}.", max_tokens=12) for key in range(8)})
    assert sorted(results) == list(range(8))
    assert all(finished.completion_tokens == 12 for _, finished, _ in results.values())


def test_four_requests_come_out_of_one_decode_per_step(make_engine) -> None:
    engine = make_engine(parallel=4)
    for key in range(4):
        assert engine.start(key, engine.prepare(chat(f"Question {key}: what is {key} + {key}?")), lambda: False)
    steps, seen = 0, []
    while not all(len(tokens) >= 5 for tokens in [[e for k, e in seen if k == key] for key in range(4)]):
        events = engine.step()
        steps += 1
        seen += [(key, event) for key, event in events if isinstance(event, TextDelta)]
    # The first step processes the four prompts and samples each one's first token; every later
    # step gives each request its next token.
    assert steps <= 6
    while engine.running:
        engine.step()


def test_a_joining_prompt_is_processed_in_chunks_while_others_generate(make_engine) -> None:
    engine = make_engine(parallel=2)
    engine.start("short", engine.prepare(chat("Count to one hundred.", max_tokens=400)), lambda: False)
    engine.step()  # its prompt, and its first token
    long_prompt = engine.prepare(chat("Summarise: " + "the quick brown fox jumps over the lazy dog. " * 60))
    assert len(long_prompt.prompt) > 5 * PREFILL_CHUNK_WHILE_GENERATING
    engine.start("long", long_prompt, lambda: False)
    steps_until_long_answers = 0
    while True:
        events = engine.step()
        steps_until_long_answers += 1
        assert any(key == "short" and isinstance(event, TextDelta) for key, event in events)  # never stalled
        if any(key == "long" for key, _ in events):
            break
    assert steps_until_long_answers >= len(long_prompt.prompt) // PREFILL_CHUNK_WHILE_GENERATING


def test_a_follow_up_turn_skips_the_cached_history(make_engine) -> None:
    engine = make_engine(parallel=2)
    history = "Here are my notes about the harbour renovation. " * 40
    first = smollm2_chat([ChatMessage("user", history)], max_tokens=8, sampling=GREEDY)
    follow_up = smollm2_chat(
        [ChatMessage("user", history), ChatMessage("assistant", "Noted."), ChatMessage("user", "Dates?")],
        max_tokens=8,
        sampling=GREEDY,
    )
    cold = run_all(engine, {"first": first})["first"][2]
    warm = run_all(engine, {"follow": follow_up})["follow"][2]
    assert cold.cached_tokens < 40  # at most the chat template's system prompt
    assert warm.cached_tokens >= cold.prompt_tokens - 2


def test_requests_admitted_together_process_their_shared_prefix_once(make_engine) -> None:
    """Four agents with one long system prompt, started together: the first processes it, the
    others take its cells and process only their own question."""
    engine = make_engine(parallel=4)
    decoded: list[int] = []
    decode = engine._context.decode
    engine._context.decode = lambda batch: (decoded.append(len(batch)), decode(batch))[1]  # type: ignore[method-assign]
    system = ChatMessage("system", "You are a careful assistant for the harbour office. " * 30)
    jobs = {
        key: smollm2_chat(
            [system, ChatMessage("user", f"Question {key}: what is open on day {key}?")], max_tokens=4, sampling=GREEDY
        )
        for key in range(4)
    }
    prompts = {key: engine.prepare(job).prompt for key, job in jobs.items()}
    results = run_all(engine, jobs)
    shared = min(next(i for i, (a, b) in enumerate(zip(prompts[0], prompts[key])) if a != b) for key in range(1, 4))
    assert shared > 300
    assert results[0][2].cached_tokens == 0
    unshared = sum(len(prompt) - shared for prompt in prompts.values())
    generated = sum(finished.completion_tokens for _, finished, _ in results.values())
    # Prefix once, each question's own tokens, and the generated tokens (the last not decoded).
    assert sum(decoded) <= shared + unshared + generated
    assert all(text for text, _, _ in results.values())


def test_a_request_waits_for_room_in_the_shared_cache(make_engine) -> None:
    engine = make_engine(parallel=2, n_ctx=512)
    text = "Tell me about the harbour. " * 45
    first = engine.prepare(chat(text, max_tokens=20))
    second = engine.prepare(chat("Another: " + text, max_tokens=20))
    assert len(first.prompt) + len(second.prompt) > engine.n_ctx
    assert engine.start("first", first, lambda: False)
    assert engine.start("second", second, lambda: False) is None  # no room while the first runs
    while engine.running:
        engine.step()
    assert engine.start("second", second, lambda: False)  # the finished one's cache makes room
    while engine.running:
        engine.step()


def test_when_running_requests_fill_the_cache_the_newest_ends(make_engine) -> None:
    engine = make_engine(parallel=2, n_ctx=512)
    results = run_all(
        engine, {"older": chat("Tell me a story.", max_tokens=400), "newer": chat("Another story.", max_tokens=400)}
    )
    reasons = {key: result[1] for key, result in results.items()}
    assert reasons["newer"].finish_reason == "length" and reasons["newer"].completion_tokens < 400
    assert reasons["older"].completion_tokens > reasons["newer"].completion_tokens


def test_a_cancelled_request_frees_its_slot_at_the_next_step(make_engine) -> None:
    engine = make_engine(parallel=2)
    cancelled = {"a": False}
    engine.start("a", engine.prepare(chat("Story?", max_tokens=500)), lambda: cancelled["a"])
    engine.start("b", engine.prepare(chat("Poem?", max_tokens=500)), lambda: False)
    engine.step()
    assert engine.free_slots == 0
    cancelled["a"] = True
    events = engine.step()
    assert any(key == "a" and isinstance(e, Finished) and e.finish_reason == "cancelled" for key, e in events)
    assert engine.free_slots == 1


def test_n_choices_cancelled_mid_prompt_each_finish_once(make_engine) -> None:
    """A request with n = 2 whose first slot has the higher index, cancelled while its prompt is
    processed: its second choice was finished twice (an AssertionError that killed the worker)."""
    engine = make_engine(parallel=2, n_batch=16)
    story = "Tell me a story about a lighthouse keeper."
    run_all(engine, {"other": chat("Hello there."), "story": chat(story)})  # slots 0 and 1, in turn
    long = engine.prepare(replace(chat(story + " Make it long. " * 20), n=2))
    cancelled = False
    assert engine.start("long", long, lambda: cancelled)
    engine.step()  # the first 16 tokens of its prompt (the rest were cached in slot 1)
    cancelled = True
    events = engine.step()
    assert [(key, event.index) for key, event in events if isinstance(event, Finished)] == [("long", 0), ("long", 1)]
    assert engine.free_slots == 2
    assert run_all(engine, {"after": chat("Still there?")})["after"][1].completion_tokens == 16
