"""The scheduler over a fake context, driven by hypothesis through random sequences of admit,
cancel (at any point: queued in a step, mid-prompt, n > 1) and step, with prompts that share
prefixes (the prompt cache), fill the context (eviction of idle caches) and outgrow it
(context full). After every operation: cells in use never exceed n_ctx and match what the fake
llama.cpp holds, every slot in use belongs to one running choice, samplers are not leaked; every
admitted request ends with exactly one Finished per choice, and a cancelled one has its slots
free after the next step."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from inference.runtime.jobs import ChatJob, Finished, Prepared, PromptAccepted, Sampling, TextDelta, TokenLogprob
from inference.runtime.prompt_cache import PromptCache
from inference.runtime.scheduler import BatchToken, Scheduler

END = 0
VOCABULARY = 12


class FakeSampler:
    def __init__(self, context: FakeContext, seed: int) -> None:
        self._context, self._random = context, random.Random(seed)
        context.samplers_open += 1

    def sample(self, index: int) -> int:
        assert self._context.last_batch[index].logits, "sampled a token whose logits were not computed"
        return END if self._random.random() < 0.1 else self._random.randrange(1, VOCABULARY)

    def close(self) -> None:
        self._context.samplers_open -= 1


class FakeContext:
    """llama.cpp's unified KV cache, as far as the scheduler can tell: cells hold a position of one
    or more sequences; a decode needs a free cell per token and contiguous positions."""

    def __init__(self, n_ctx: int, batch_capacity: int) -> None:
        self.n_ctx, self.batch_capacity = n_ctx, batch_capacity
        self.sequences: dict[int, list[int]] = defaultdict(list)  # seq_id -> its cells' ids
        self.tokens: dict[int, list[int]] = defaultdict(list)
        self.last_batch: list[BatchToken] = []
        self.samplers_open = 0
        self._next_cell = 0
        self._seeds = 0

    def cells_in_use(self) -> int:
        return len({cell for cells in self.sequences.values() for cell in cells})

    def decode(self, batch: list[BatchToken]) -> None:
        assert 0 < len(batch) <= self.batch_capacity
        for token, position, seq_id, _ in batch:
            assert position == len(self.sequences[seq_id]), "positions of a sequence must be contiguous"
            self.sequences[seq_id].append(self._next_cell)
            self.tokens[seq_id].append(token)
            self._next_cell += 1
        assert self.cells_in_use() <= self.n_ctx, "llama.cpp would find no free cell"
        self.last_batch = batch

    def sampler(self, job: ChatJob, seed_offset: int) -> FakeSampler:
        self._seeds += 1
        return FakeSampler(self, self._seeds)

    def is_end_of_generation(self, token: int) -> bool:
        return token == END

    def piece(self, token: int) -> bytes:
        return "xyz..é"[token % 6].encode()

    def logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        return TokenLogprob(self.piece(token).decode(), -1.0, tuple(self.piece(token)))

    def forget(self, seq_id: int, keep: int) -> None:
        del self.sequences[seq_id][keep:], self.tokens[seq_id][keep:]

    def share(self, source: int, target: int) -> None:
        assert not self.sequences[target], "sharing into a sequence that holds cells"
        self.sequences[target] = list(self.sequences[source])
        self.tokens[target] = list(self.tokens[source])

    def save_sequence(self, seq_id: int) -> bytes:
        return json.dumps(self.tokens[seq_id]).encode()

    def restore_sequence(self, seq_id: int, state: bytes) -> bool:
        assert not self.sequences[seq_id], "restoring into a sequence that holds cells"
        tokens = json.loads(state)
        if self.cells_in_use() + len(tokens) > self.n_ctx:
            return False
        self.sequences[seq_id] = list(range(self._next_cell, self._next_cell + len(tokens)))
        self.tokens[seq_id] = tokens
        self._next_cell += len(tokens)
        return True


@dataclass
class Tracked:
    n: int
    cancelled: bool = False
    finished: Counter[int] = field(default_factory=Counter)  # choice -> Finished events seen
    cancel_seen_by_step: bool = False  # a step ran since it was cancelled


prompts = st.lists(st.integers(1, VOCABULARY - 1), min_size=1, max_size=40)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.context: FakeContext | None = None
        self.requests: dict[Hashable, Tracked] = {}
        self.prompts: list[list[int]] = [[]]  # admitted so far (a new one may begin like any)

    @precondition(lambda self: self.context is None)
    @rule(
        parallel=st.integers(1, 4), n_ctx=st.integers(24, 96), capacity=st.integers(1, 12),
        cache_bytes=st.none() | st.integers(0, 600),
    )
    def start(self, parallel: int, n_ctx: int, capacity: int, cache_bytes: int | None) -> None:
        self.context = FakeContext(n_ctx, max(capacity, parallel))  # as LoadSettings.batch_capacity
        self.now = 0.0
        cache = None if cache_bytes is None else PromptCache(cache_bytes, min_tokens=4, clock=self._clock)
        self.scheduler = Scheduler(self.context, parallel, clock=self._clock, cache=cache)

    def _clock(self) -> float:
        self.now += 1
        return self.now

    @precondition(lambda self: self.context is not None)
    @rule(
        tail=prompts,
        shared=st.integers(0, 40),
        earlier=st.integers(0, 6),
        n=st.integers(1, 4),
        max_tokens=st.none() | st.integers(1, 60),
        logprobs=st.booleans(),
        stops=st.sampled_from([(), ("yz",), ("é",)]),
    )
    def admit(
        self, tail: list[int], shared: int, earlier: int, n: int, max_tokens: int | None, logprobs: bool, stops: tuple
    ) -> None:
        base = self.prompts[max(0, len(self.prompts) - 1 - earlier)]
        prompt = (base[:shared] + tail)[: self.context.n_ctx - 1]  # prepare refuses longer
        self.prompts.append(prompt)
        if n > len(self.scheduler.slots):
            return  # prepare refuses it
        key = len(self.requests)
        job = ChatJob(
            messages=(), n=n, max_tokens=max_tokens, sampling=Sampling(temperature=1.0),
            logprobs=0 if logprobs else None,
        )
        tracked = Tracked(n)
        accepted = self.scheduler.admit(key, Prepared(job, prompt, stops), lambda: tracked.cancelled)
        if accepted is not None:
            assert isinstance(accepted, PromptAccepted) and accepted.prompt_tokens == len(prompt)
            assert accepted.cached_tokens < len(prompt)
            assert accepted.cache_tier in (("slot", "ram") if accepted.cached_tokens else ("",))
            self.requests[key] = tracked
            first = next(slot for slot in self.scheduler.slots if slot.choice and slot.choice.request.key == key and slot.choice.index == 0)
            assert first.tokens == prompt[: accepted.cached_tokens], "a cached prefix is the prompt's own"
            self.requests[key] = tracked

    @precondition(lambda self: self.context is not None and self.running())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.running())))
        self.requests[key].cancelled = True

    @precondition(lambda self: self.context is not None)
    @rule()
    def step(self) -> None:
        cancelled_before = [key for key in self.running() if self.requests[key].cancelled]
        self.record(self.scheduler.step())
        for key in cancelled_before:
            tracked = self.requests[key]
            assert sum(tracked.finished.values()) == tracked.n, "a cancelled request ends at the next step"
        held = {slot.choice.request.key for slot in self.scheduler.slots if slot.choice is not None}
        assert not held & set(cancelled_before), "a cancelled request's slots are free at the next step"

    def record(self, events: list) -> None:
        for key, event in events:
            tracked = self.requests[key]
            if isinstance(event, TextDelta):
                assert not tracked.finished[event.index], "text after its choice finished"
            elif isinstance(event, Finished):
                tracked.finished[event.index] += 1
                assert tracked.finished[event.index] == 1, "a choice finished twice"
                assert event.finish_reason in ("stop", "length", "cancelled")
                assert event.finish_reason != "cancelled" or tracked.cancelled

    def running(self) -> list[Hashable]:
        return [key for key, tracked in self.requests.items() if sum(tracked.finished.values()) < tracked.n]

    @invariant()
    def cells_within_the_context_and_as_llama_cpp_holds_them(self) -> None:
        if self.context is None:
            return
        assert self.scheduler.cells_used() <= self.context.n_ctx
        assert len(self.scheduler.cells) == self.context.cells_in_use()
        for slot in self.scheduler.slots:
            assert slot.tokens == self.context.tokens[slot.seq_id]

    @invariant()
    def the_prompt_cache_keeps_within_its_budget(self) -> None:
        cache = self.context and self.scheduler.cache
        if cache:
            assert cache.size_bytes <= cache.budget_bytes

    @invariant()
    def each_slot_in_use_belongs_to_one_running_choice(self) -> None:
        if self.context is None:
            return
        running = set(self.running())
        choices = [slot.choice for slot in self.scheduler.slots if slot.choice is not None]
        assert len({id(choice) for choice in choices}) == len(choices)
        for choice in choices:
            assert choice.slot.choice is choice and choice.request.key in running
            assert not self.requests[choice.request.key].finished[choice.index]
        unfinished = sum(tracked.n - sum(tracked.finished.values()) for tracked in self.requests.values())
        assert len(choices) == unfinished == self.context.samplers_open

    def teardown(self) -> None:
        if self.context is None:
            return
        for _ in range(10_000):
            if not self.running():
                break
            self.record(self.scheduler.step())
        assert not self.running(), "requests never ended"
        assert all(all(tracked.finished[i] == 1 for i in range(tracked.n)) for tracked in self.requests.values())
        assert self.scheduler.free_slots == len(self.scheduler.slots) and self.context.samplers_open == 0


SchedulerMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_scheduler = SchedulerMachine.TestCase
