"""The scheduler over a fake context, driven by hypothesis through random sequences of admit,
cancel (at any point: queued in a step, mid-prompt, n > 1) and step, with prompts that share
prefixes (the prompt cache), fill the context (eviction of idle caches) and outgrow it
(context full). After every operation: cells in use never exceed n_ctx and match what the fake
llama.cpp holds, every slot in use belongs to one running choice, samplers are not leaked; at
every step, each generating choice gets its next token if the cells allow; every admitted
request ends with exactly one Finished per choice, and a cancelled one has its slots free after
the next step.

The fake model is a function of the sequence so far and one draw of the choice's own random
generator per sampled token, and it likes to repeat itself, so drafts often come true. Every
operation runs on two schedulers, one drafting and taking prefixes from running requests, and
one doing neither: each choice's tokens come out the same (one a prefix of the other where
cancellation or a full context cut one short)."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from inference.runtime.choices import ChoiceState
from inference.runtime.decoding import BatchToken
from inference.runtime.jobs import ChatJob, Finished, Prepared, PromptAccepted, Sampling, TextDelta, TokenLogprob
from inference.runtime.prompt_cache import PromptCache
from inference.runtime.scheduler import Scheduler

END = 0
VOCABULARY = 12


def next_token(sequence: tuple[int, ...], draw: float, choose: Callable[[int, int], int], surprise: float) -> int:
    """The fake model: what followed the last token's previous occurrence, but with probability
    `surprise` a token the choice's generator picks (a quarter of the time the end)."""
    if draw < surprise / 4:
        return END
    if draw < surprise:
        return choose(1, VOCABULARY)
    last = sequence[-1]
    for position in range(len(sequence) - 2, -1, -1):
        if sequence[position] == last:
            return sequence[position + 1]
    return last % (VOCABULARY - 1) + 1


class FakeSampler:
    def __init__(self, context: FakeContext, seed: int) -> None:
        self._context, self._random = context, random.Random(seed)
        self.drawn = context.drawn[seed] = []  # every token it sampled, in order
        self._open = True
        context.samplers_open += 1

    def sample(self, index: int) -> int:
        context = self._context
        assert self._open, "sampled with a closed sampler (its choice had finished)"
        assert context.last_batch[index].logits, "sampled a token whose logits were not computed"
        token = next_token(context.sequences_at[index], self._random.random(), self._random.randrange, context.surprise)
        self.drawn.append(token)
        return token

    def accept(self, token: int) -> None:
        raise AssertionError("no job of this machine forces a token")

    def close(self) -> None:
        self._open = False
        self._context.samplers_open -= 1


class FakeContext:
    """llama.cpp's unified KV cache, as far as the scheduler can tell: cells hold a position of one
    or more sequences; a decode needs a free cell per token and contiguous positions."""

    def __init__(self, n_ctx: int, batch_capacity: int, surprise: float = 0.3) -> None:
        self.n_ctx, self.batch_capacity, self.surprise = n_ctx, batch_capacity, surprise
        self.sequences: dict[int, list[int]] = defaultdict(list)  # seq_id -> its cells' ids
        self.tokens: dict[int, list[int]] = defaultdict(list)
        self.last_batch: list[BatchToken] = []
        self.sequences_at: list[tuple[int, ...]] = []  # each batch token's sequence, up to it
        self.drawn: dict[int, list[int]] = {}  # seed -> the tokens its sampler drew
        self.samplers_open = 0
        self._next_cell = 0

    def cells_in_use(self) -> int:
        return len({cell for cells in self.sequences.values() for cell in cells})

    def decode(self, batch: list[BatchToken]) -> None:
        assert 0 < len(batch) <= self.batch_capacity
        self.sequences_at = []
        for token, position, seq_id, _ in batch:
            assert position == len(self.sequences[seq_id]), "positions of a sequence must be contiguous"
            self.sequences[seq_id].append(self._next_cell)
            self.tokens[seq_id].append(token)
            self.sequences_at.append(tuple(self.tokens[seq_id]))
            self._next_cell += 1
        assert self.cells_in_use() <= self.n_ctx, "llama.cpp would find no free cell"
        self.last_batch = batch

    def sampler(self, job: ChatJob, seed_offset: int) -> FakeSampler:
        return FakeSampler(self, job.sampling.seed + seed_offset)  # type: ignore[operator]  # the machine's jobs all have a seed

    def is_end_of_generation(self, token: int) -> bool:
        return token == END

    def piece(self, token: int, special: bool = False) -> bytes:
        return "xyz..é"[token % 6].encode()

    def logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        return TokenLogprob(self.piece(token).decode(), -1.0, tuple(self.piece(token)))

    def forget(self, seq_id: int, keep: int) -> None:
        del self.sequences[seq_id][keep:], self.tokens[seq_id][keep:]

    def share(self, source: int, target: int, start: int = 0, end: int = -1) -> None:
        assert len(self.sequences[target]) == start, "sharing into a sequence that holds other cells"
        assert self.tokens[target] == self.tokens[source][:start], "sharing after a different beginning"
        end = len(self.sequences[source]) if end < 0 else end
        assert start <= end <= len(self.sequences[source]), "sharing cells the source does not hold"
        self.sequences[target] += self.sequences[source][start:end]
        self.tokens[target] += self.tokens[source][start:end]

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
    limit: int  # tokens each choice may generate, as the scheduler reckons it
    cancelled: bool = False
    finished: dict[int, Finished] = field(default_factory=dict)  # choice -> its Finished
    texts: defaultdict[int, str] = field(default_factory=lambda: defaultdict(str))

    def ended_by_itself(self, index: int) -> bool:
        """Not cancelled, nor cut short by a full context (which depends on what ran beside it)."""
        finished = self.finished[index]
        return finished.finish_reason == "stop" or finished.completion_tokens == self.limit


class Run:
    """A scheduler over its own fake context, and the requests it admitted."""

    def __init__(
        self,
        context: FakeContext,
        parallel: int,
        drafting: bool,
        clock: Callable[[], float],
        cache_bytes: int | None = None,
    ) -> None:
        self.context = context
        cache = None if cache_bytes is None else PromptCache(cache_bytes, min_tokens=4, clock=clock)
        # The drafting run also shares prefixes between running requests; the plain run does neither.
        self.scheduler = Scheduler(
            context, parallel, drafting=drafting, clock=clock, cache=cache, share_prefixes=drafting
        )
        self.drafting = drafting
        self.requests: dict[Hashable, Tracked] = {}

    def admit(self, key: int, prepared: Prepared) -> None:
        job: ChatJob = prepared.job  # type: ignore[assignment]  # the machine prepares ChatJobs only
        n_ctx, prompt = self.context.n_ctx, prepared.prompt
        tracked = Tracked(job.n, limit=min(job.max_tokens or n_ctx, n_ctx - len(prompt)))
        accepted = self.scheduler.admit(key, prepared, lambda: tracked.cancelled)
        if accepted is not None:
            assert isinstance(accepted, PromptAccepted) and accepted.prompt_tokens == len(prompt)
            assert accepted.cached_tokens < len(prompt)
            assert accepted.cache_tier in (("slot", "ram") if accepted.cached_tokens else ("",))
            first = next(
                slot
                for slot in self.scheduler.slots
                if slot.choice and slot.choice.request.key == key and slot.choice.index == 0
            )
            assert first.tokens == prompt[: accepted.cached_tokens], "a cached prefix is the prompt's own"
            self.requests[key] = tracked

    def step(self) -> None:
        cancelled_before = [key for key in self.running() if self.requests[key].cancelled]
        generating = [
            seed(choice.request.key) + choice.index
            for slot in self.scheduler.slots
            if (choice := slot.choice) and choice.state is ChoiceState.GENERATING and not choice.request.cancelled()
        ]
        drawn_before = [len(self.context.drawn[choice]) for choice in generating]
        room_for_each = self.scheduler.memory.used() + len(generating) <= self.context.n_ctx
        self.record(self.scheduler.step())
        if room_for_each:
            drawn = [len(self.context.drawn[choice]) for choice in generating]
            assert all(map(int.__gt__, drawn, drawn_before)), "a choice with a cell for its next token waited"
        for key in cancelled_before:
            tracked = self.requests[key]
            assert len(tracked.finished) == tracked.n, "a cancelled request ends at the next step"
        held = {slot.choice.request.key for slot in self.scheduler.slots if slot.choice is not None}
        assert not held & set(cancelled_before), "a cancelled request's slots are free at the next step"

    def record(self, events: list) -> None:
        for key, event in events:
            tracked = self.requests[key]
            assert event.index not in tracked.finished, "an event after its choice finished"
            if isinstance(event, TextDelta):
                tracked.texts[event.index] += event.text
            elif isinstance(event, Finished):
                tracked.finished[event.index] = event
                assert event.finish_reason in ("stop", "length", "cancelled")
                assert event.finish_reason != "cancelled" or tracked.cancelled
                assert 0 <= event.draft_accepted <= event.draft_proposed
                assert self.drafting or event.draft_proposed == 0

    def running(self) -> list[Hashable]:
        return [key for key, tracked in self.requests.items() if len(tracked.finished) < tracked.n]

    def check(self) -> None:
        """Cells within the context and as llama.cpp holds them; the prompt cache within its
        budget; each slot in use belongs to one running choice; no sampler leaked."""
        scheduler, context = self.scheduler, self.context
        assert scheduler.memory.used() <= context.n_ctx
        assert len(scheduler.memory.cells) == context.cells_in_use()
        for slot in scheduler.slots:
            assert slot.tokens == context.tokens[slot.seq_id]
        if scheduler.memory.cache is not None:
            assert scheduler.memory.cache.size_bytes <= scheduler.memory.cache.budget_bytes
        running = set(self.running())
        choices = [slot.choice for slot in scheduler.slots if slot.choice is not None]
        assert len({id(choice) for choice in choices}) == len(choices)
        for choice in choices:
            assert choice.slot.choice is choice and choice.request.key in running
            assert choice.index not in self.requests[choice.request.key].finished
        unfinished = sum(tracked.n - len(tracked.finished) for tracked in self.requests.values())
        assert len(choices) == unfinished == context.samplers_open

    def drain(self) -> None:
        for _ in range(10_000):
            if not self.running():
                break
            self.step()
        assert not self.running(), "requests never ended"
        assert all(len(tracked.finished) == tracked.n for tracked in self.requests.values())
        assert self.scheduler.free_slots == len(self.scheduler.slots) and self.context.samplers_open == 0


def seed(key: int) -> int:
    """A request's seed: its choices draw with seed + index (n ≤ 4)."""
    return key * 4


def assert_same_output(drafting: Run, plain: Run) -> None:
    """Each choice's tokens are the same with drafting and without, up to where cancellation or
    a full context cut one short; its text and ending too where it ended by itself in both."""
    for key in drafting.requests.keys() & plain.requests.keys():
        ours, theirs = drafting.requests[key], plain.requests[key]
        for index in range(ours.n):
            tokens = drafting.context.drawn[seed(key) + index], plain.context.drawn[seed(key) + index]
            shorter, longer = sorted(tokens, key=len)
            assert longer[: len(shorter)] == shorter, "drafting changed what a choice sampled"
            if ours.ended_by_itself(index) and theirs.ended_by_itself(index):
                assert tokens[0] == tokens[1] and ours.texts[index] == theirs.texts[index]
                assert ours.finished[index].finish_reason == theirs.finished[index].finish_reason
                assert ours.finished[index].completion_tokens == theirs.finished[index].completion_tokens


prompts = st.lists(st.integers(1, VOCABULARY - 1), min_size=1, max_size=40)


class SchedulerMachine(RuleBasedStateMachine):
    """Every operation on two runs alike: one drafting, one not."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []
        self.prompts: list[list[int]] = [[]]  # admitted so far (a new one may begin like any)
        self.attempts = 0
        self.now = 0.0

    @precondition(lambda self: not self.runs)
    @rule(
        parallel=st.integers(1, 4),
        n_ctx=st.integers(24, 96),
        capacity=st.integers(1, 12),
        cache_bytes=st.none() | st.integers(0, 600),
        surprise=st.sampled_from([0.3, 0.05]),  # rarely surprised, a repeated prompt gets the same answer
    )
    def start(self, parallel: int, n_ctx: int, capacity: int, cache_bytes: int | None, surprise: float) -> None:
        capacity = max(capacity, parallel)  # as LoadSettings.batch_capacity
        self.runs = [
            Run(FakeContext(n_ctx, capacity, surprise), parallel, drafting, self._clock, cache_bytes)
            for drafting in (True, False)
        ]

    def _clock(self) -> float:
        self.now += 1
        return self.now

    @precondition(lambda self: self.runs)
    @rule(
        tail=st.just([]) | prompts,  # none: an earlier prompt again, whose answer drafting recalls
        shared=st.integers(0, 40),
        earlier=st.integers(0, 6),
        n=st.integers(1, 4),
        max_tokens=st.none() | st.integers(1, 60),
        logprobs=st.booleans(),
        stops=st.sampled_from([(), ("yz",), ("é",), ("x",)]),
    )
    def admit(
        self, tail: list[int], shared: int, earlier: int, n: int, max_tokens: int | None, logprobs: bool, stops: tuple
    ) -> None:
        n_ctx, parallel = self.runs[0].context.n_ctx, len(self.runs[0].scheduler.slots)
        base = self.prompts[max(0, len(self.prompts) - 1 - earlier)]
        prompt = (base[:shared] + tail if tail else base)[: n_ctx - 1]  # prepare refuses longer
        if not prompt:
            return  # prepare refuses it
        self.prompts.append(prompt)
        if n > parallel:
            return  # prepare refuses it
        key, self.attempts = self.attempts, self.attempts + 1
        job = ChatJob(
            messages=(),
            n=n,
            max_tokens=max_tokens,
            sampling=Sampling(temperature=1.0, seed=seed(key)),
            logprobs=0 if logprobs else None,
        )
        for run in self.runs:
            run.admit(key, Prepared(job, list(prompt), stops))

    @precondition(lambda self: any(run.running() for run in self.runs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted({key for run in self.runs for key in run.running()})))
        for run in self.runs:
            if key in run.requests:
                run.requests[key].cancelled = True

    @precondition(lambda self: self.runs)
    @rule()
    def step(self) -> None:
        for run in self.runs:
            run.step()

    @invariant()
    def scheduler_state_is_consistent(self) -> None:
        for run in self.runs:
            run.check()

    def teardown(self) -> None:
        for run in self.runs:
            run.drain()
        if self.runs:
            assert_same_output(*self.runs)


SchedulerMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_scheduler = pytest.mark.slow(SchedulerMachine.TestCase)


def run_to_the_end(scheduler: Scheduler, requests: dict[str, tuple[list[int], int]]) -> list[list]:
    """Admit each (prompt, max_tokens) and step until all are done; each step's events."""
    for number, (key, (prompt, max_tokens)) in enumerate(requests.items()):
        job = ChatJob(messages=(), max_tokens=max_tokens, sampling=Sampling(seed=seed(number)))
        assert scheduler.admit(key, Prepared(job, prompt), lambda: False)
    steps = []
    while scheduler.running:
        steps.append(scheduler.step())
    return steps


def test_every_draft_of_a_model_that_copies_comes_true_up_to_its_limit() -> None:
    """A model that only repeats what it saw: the draft after each step comes true whole, no
    draft reaches past the choice's limit, and the output is what it is without drafting."""
    outputs = {}
    for drafting in (False, True):
        context = FakeContext(n_ctx=200, batch_capacity=16, surprise=0.0)
        steps = run_to_the_end(Scheduler(context, 2, drafting=drafting), {"copy": ([1, 2, 3, 4, 5, 6] * 3, 41)})
        [finished] = [event for events in steps for _, event in events if isinstance(event, Finished)]
        outputs[drafting] = (context.drawn[seed(0)], finished, len(steps))
    (plain, plain_finished, plain_steps), (drafted, finished, steps) = outputs[False], outputs[True]
    assert drafted == plain and finished.completion_tokens == plain_finished.completion_tokens == 41
    assert finished.draft_accepted == finished.draft_proposed > 30 and steps < plain_steps / 3


def test_drafts_never_delay_a_joining_prompt() -> None:
    """Drafts fill only what the next tokens and the prompt chunks leave of the batch: a request
    that joins one which drafts gets its first token as soon as without drafting."""
    requests = {"a": ([1, 2, 3, 4, 5] * 2, 30), "b": ([6, 7, 8, 9, 10] * 4, 30)}
    first_token_of_b = {}
    for drafting in (False, True):
        scheduler = Scheduler(FakeContext(n_ctx=200, batch_capacity=6, surprise=0.0), 2, drafting=drafting)
        steps = run_to_the_end(scheduler, requests)
        first_token_of_b[drafting] = next(
            number for number, events in enumerate(steps) if any(k == "b" for k, _ in events)
        )
        finished = {key: event for events in steps for key, event in events if isinstance(event, Finished)}
    assert first_token_of_b[True] == first_token_of_b[False] > 3
    assert finished["a"].draft_accepted > 0


def test_a_draft_never_takes_the_cell_of_another_choice_s_next_token() -> None:
    """Two copying choices in a context about to fill up: the first one drafts only into the
    cells that the second one's next token leaves (Run.step checks it at every step)."""
    run = Run(FakeContext(n_ctx=26, batch_capacity=8, surprise=0.0), 2, drafting=True, clock=time.monotonic)
    for key, prompt in enumerate(([1, 2, 3, 4, 5] * 2, [6, 7, 8, 9, 10] * 2)):
        run.admit(key, Prepared(ChatJob(messages=(), max_tokens=15, sampling=Sampling(seed=seed(key))), prompt))
    run.drain()
    assert run.requests[0].finished[0].draft_accepted > 0


class HalfCharacters(FakeContext):
    """Every token is half of an "é": the first byte, then the second."""

    pieces = 0

    def piece(self, token: int, special: bool = False) -> bytes:
        self.pieces += 1
        return b"\xc3" if self.pieces % 2 else b"\xa9"

    def logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        return TokenLogprob("", -1.0, ())


def test_a_character_cut_by_the_length_limit_is_not_sent() -> None:
    context = HalfCharacters(n_ctx=64, batch_capacity=8, surprise=0.0)  # never the end token
    steps = run_to_the_end(Scheduler(context, 1), {"cut": ([1, 2, 3], 5)})
    deltas = [event for events in steps for _, event in events if isinstance(event, TextDelta)]
    [finished] = [event for events in steps for _, event in events if isinstance(event, Finished)]
    assert "".join(delta.text for delta in deltas) == "éé" and finished.completion_tokens == 5


def test_the_logprobs_of_tokens_that_gave_no_text_still_go_out() -> None:
    """A one-token answer that is half a character says nothing, but its logprob is sent."""
    context = HalfCharacters(n_ctx=64, batch_capacity=8, surprise=0.0)
    scheduler: Scheduler[str] = Scheduler(context, 1)
    job = ChatJob(messages=(), max_tokens=1, logprobs=0, sampling=Sampling(seed=seed(0)))
    assert scheduler.admit("half", Prepared(job, [1, 2, 3]), lambda: False)
    events = [event for _ in range(3) for _, event in scheduler.step()]
    [delta] = [event for event in events if isinstance(event, TextDelta)]
    assert delta.text == "" and len(delta.logprobs) == 1
