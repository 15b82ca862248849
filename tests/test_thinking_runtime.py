"""The runtime's side of models' own templates: prompts rendered by serving, thinking counted and
bounded by a budget (its end marker forced), the template's markup printed.

The watch over thinking is checked against a reference that reads the whole text at once; a
hypothesis property drives the scheduler over a fake context whose tokens split and join the
markers every way, with drafting on and off; the real engine on SmolLM2 shows the forced marker,
the grammar and logit bias going on from it, and markup tokens printed only when asked for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import llama_cpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from inference.runtime.engine import GenerationEngine
from inference.runtime.errors import NoChatTemplate
from inference.runtime.jobs import (
    ChatJob,
    ChatMessage,
    Finished,
    GenerationJob,
    Prepared,
    Sampling,
    TextDelta,
    Thinking,
)
from inference.runtime.scheduler import Scheduler
from inference.runtime.settings import LoadSettings
from inference.runtime.thinking import ThinkingWatch
from tests.test_scheduler import FakeContext

# --- the watch, against a reference -------------------------------------------------------------

START, END_MARK = "<t>", "</t>"


def reference(texts: list[str], forced: list[bool], opened: bool) -> tuple[bool, int]:
    """Whether the whole text ends inside thinking, and how many sampled tokens have text in it."""
    text, regions, position, inside, begun = "".join(texts), [], 0, opened, 0
    while True:
        at = text.find(END_MARK if inside else START, position)
        if at < 0:
            if inside:
                regions.append((begun, len(text)))
            break
        if inside:
            regions.append((begun, at))
            position = at + len(END_MARK)
        else:
            begun = position = at + len(START)
        inside = not inside
    count, offset = 0, 0
    for piece, was_forced in zip(texts, forced, strict=True):
        start, end = offset, offset + len(piece)
        offset = end
        if not was_forced and any(max(start, low) < min(end, high) for low, high in regions):
            count += 1
    return inside, count


@pytest.mark.parametrize(
    "pieces, opened, thinking_tokens",
    [
        (["a", "</", "t", ">", "b"], True, 1),  # the end marker spans three tokens
        (["a", "</t", ">b", "c"], True, 1),  # a token holds the end of the marker and text after it
        (["x", "<", "t>y", "z", "</t>"], False, 2),  # ...and of the start marker, then thinking
        (["a</t><t>b", "c", "</t>", "d"], True, 2),  # closed and opened again inside one token
        (["<t>", "</t>", "a"], False, 0),  # thinking about nothing
        (["a", "</", "x", "</t>"], True, 3),  # a false start of the end marker is thinking
        (["a", "</", "t"], True, 3),  # an end marker that never came whole: all thinking
    ],
)
def test_the_watch_counts_the_tokens_with_text_inside_thinking(
    pieces: list[str], opened: bool, thinking_tokens: int
) -> None:
    watch = ThinkingWatch(Thinking(START, END_MARK, open=opened), end_tokens=[1])
    for piece in pieces:
        watch.feed(piece)
    assert watch.reasoning_tokens == thinking_tokens == reference(pieces, [False] * len(pieces), opened)[1]
    assert watch.inside == reference(pieces, [False] * len(pieces), opened)[0]
    assert not watch.forcing


def test_the_budget_forces_the_end_marker_once_per_opening() -> None:
    watch = ThinkingWatch(Thinking(START, END_MARK, open=True, budget=2), end_tokens=[7, 8])
    watch.feed("a")
    assert watch.forced() is None
    watch.feed("</")  # might be the model's own end marker: counted while it might not
    assert watch.forcing and watch.reasoning_tokens == 2
    for token, text in ((watch.forced(), "</"), (watch.forced(), "t>")):
        assert token is not None
        watch.feed(text, forced=True)
    assert watch.forced() is None and not watch.inside and watch.reasoning_tokens == 2  # "</" was thinking
    watch.feed("<t>")  # opened again: the budget is spent already
    assert watch.forced() == 7


def test_a_budget_of_nothing_forces_the_end_marker_first() -> None:
    assert ThinkingWatch(Thinking(START, END_MARK, open=True, budget=0), end_tokens=[3]).forced() == 3
    closed = ThinkingWatch(Thinking(START, END_MARK, budget=0), end_tokens=[3])
    assert closed.forced() is None
    closed.feed("<t")
    closed.feed(">")
    assert closed.forced() == 3


# --- the scheduler over a fake context ----------------------------------------------------------

END = 0
PIECES = ["", "<", "t", ">", "</", "a", "t>b", "</t>", "<t>", "x</t><t>y", "b<", "/t", "t><"]
FORCED_END = (4, 2, 3)  # "</" "t" ">"


class ScriptedSampler:
    """Hands out its script's tokens (then the end), whatever the logits; logs what it gave and
    what it was made to accept."""

    def __init__(self, script: list[int]) -> None:
        self._script = iter(script)
        self.log: list[tuple[int, bool]] = []  # (token, forced)

    def sample(self, index: int) -> int:
        token = next(self._script, END)
        self.log.append((token, False))
        return token

    def accept(self, token: int) -> None:
        self.log.append((token, True))

    def close(self) -> None:
        pass


class ScriptedContext(FakeContext):
    def __init__(self, scripts: list[list[int]]) -> None:
        super().__init__(n_ctx=1024, batch_capacity=64)
        self.samplers = [ScriptedSampler(script) for script in scripts]

    def sampler(self, job: ChatJob, seed_offset: int) -> ScriptedSampler:  # type: ignore[override]
        return self.samplers[seed_offset]

    def is_end_of_generation(self, token: int) -> bool:
        return token == END

    def piece(self, token: int, special: bool = False) -> bytes:
        return PIECES[token].encode()


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    scripts=st.lists(st.lists(st.integers(0, len(PIECES) - 1), max_size=40), min_size=1, max_size=2),
    opened=st.booleans(),
    budget=st.none() | st.integers(0, 6),
    max_tokens=st.integers(1, 50),
    drafting=st.booleans(),
)
def test_forcing_never_lets_thinking_run_past_its_budget(
    scripts: list[list[int]], opened: bool, budget: int | None, max_tokens: int, drafting: bool
) -> None:
    """Whatever the model generates: no token is sampled inside thinking once its budget is spent
    (the end marker is forced, whole, from there); the reported thinking tokens are the
    reference's; every token, forced or sampled, is in the text and counted."""
    context = ScriptedContext(scripts)
    scheduler: Scheduler[str] = Scheduler(context, parallel=2, drafting=drafting)
    job = ChatJob(
        messages=(), n=len(scripts), max_tokens=max_tokens, thinking=Thinking(START, END_MARK, opened, budget)
    )
    assert scheduler.admit("job", Prepared(job, [5, 5, 5, 5], thinking_end=FORCED_END), lambda: False)
    texts, finished = ["", ""], {}
    for _ in range(200):
        for _, event in scheduler.step():
            if isinstance(event, TextDelta):
                texts[event.index] += event.text
            elif isinstance(event, Finished):
                finished[event.index] = event
        if len(finished) == len(scripts):
            break
    for index, sampler in enumerate(context.samplers):
        log = [(token, forced) for token, forced in sampler.log if forced or token != END]
        tokens, forced = [PIECES[token] for token, _ in log], [was for _, was in log]
        assert texts[index] == "".join(tokens)
        assert finished[index].completion_tokens == len(log)
        inside, thinking = reference(tokens, forced, opened)
        assert finished[index].reasoning_tokens == thinking <= finished[index].completion_tokens
        position = 0
        while position < len(log):
            inside, spent = reference(tokens[:position], forced[:position], opened)
            due = inside and budget is not None and spent >= budget
            assert forced[position] == due, f"token {position}: forced {forced[position]}, budget spent {due}"
            if due:  # the whole end marker (unless the choice hit its limit)
                run = [token for token, _ in log[position : position + len(FORCED_END)]]
                assert run == list(FORCED_END[: len(run)]) and all(forced[position : position + len(run)])
                position += len(run)
            else:
                position += 1


# --- the real engine on SmolLM2 -----------------------------------------------------------------

CHAT = [ChatMessage("user", "What is the capital of France? Think it through first.")]


@pytest.fixture(scope="module")
def engine(smollm2_file: Path) -> Iterator[GenerationEngine]:
    settings = LoadSettings(n_ctx=1024, n_gpu_layers=0, n_threads=1, n_threads_batch=2, parallel=2)
    engine: GenerationEngine = GenerationEngine("smollm2", smollm2_file, settings)
    yield engine
    engine.close()


def rendered(engine: GenerationEngine, messages: list[ChatMessage]) -> tuple[str, list[int]]:
    """The messages as the runtime rendered them before serving did (llama-cpp-python's Jinja2
    formatter on the GGUF's template), and the tokens it made of them."""
    model = engine.model
    template = llama_cpp.llama_model_chat_template(model.pointer, None).decode()
    text = [llama_cpp.llama_vocab_get_text(model.vocab, token).decode() for token in (2, 1)]
    formatter = Jinja2ChatFormatter(template=template, eos_token=text[0], bos_token=text[1])
    prompt = formatter(messages=[{"role": m.role, "content": m.content} for m in messages]).prompt  # type: ignore[misc]
    return prompt, model.tokenize(prompt, add_special=False)


def run(engine: GenerationEngine, job: GenerationJob) -> tuple[str, Finished]:
    assert engine.start("job", engine.prepare(job), lambda: False)
    text, finished = "", None
    while finished is None:
        for _, event in engine.step():
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, Finished):
                finished = event
    return text, finished


def thinking_job(engine: GenerationEngine, budget: int | None = None, **fields: object) -> ChatJob:
    """Greedy, thinking open from the prompt's end, with the model kept from writing "<" (so
    from closing its thinking itself) and from ending."""
    model = engine.model
    banned = [
        token for token in range(model.n_vocab) if b"<" in model.piece(token) or model.is_end_of_generation(token)
    ]
    prompt, _ = rendered(engine, CHAT)
    defaults: dict[str, object] = {
        "messages": (),
        "prompt_text": prompt + "<think>\n",
        "max_tokens": 30,
        "sampling": Sampling(temperature=0),
        "logit_bias": tuple((token, -100.0) for token in banned),
        "thinking": Thinking("<think>", "</think>", open=True, budget=budget),
    }
    return ChatJob(**{**defaults, **fields})  # type: ignore[arg-type]


def test_a_rendered_prompt_is_tokenized_as_the_template_path_did(engine: GenerationEngine) -> None:
    messages = [ChatMessage("system", "Be brief."), *CHAT]
    prompt, tokens = rendered(engine, messages)
    assert prompt.startswith("<|im_start|>system")
    prepared = engine.prepare(ChatJob(messages=tuple(messages), prompt_text=prompt))
    assert prepared.prompt == tokens and prepared.stops == ()


def test_without_a_rendered_prompt_only_a_named_chat_format_renders(
    engine: GenerationEngine, smollm2_file: Path
) -> None:
    with pytest.raises(NoChatTemplate):
        engine.prepare(ChatJob(messages=tuple(CHAT)))
    settings = LoadSettings(n_ctx=256, n_gpu_layers=0, n_threads=1, n_threads_batch=1, chat_format="chatml")
    chatml: GenerationEngine = GenerationEngine("chatml", smollm2_file, settings)
    try:
        prepared = chatml.prepare(ChatJob(messages=tuple(CHAT)))
    finally:
        chatml.close()
    text = engine.model.detokenize(prepared.prompt)
    assert f"<|im_start|>user\n{CHAT[0].content}<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert prepared.stops == ("<|im_end|>",)


def test_a_spent_budget_forces_the_end_of_thinking(engine: GenerationEngine) -> None:
    text, finished = run(engine, thinking_job(engine, budget=5))
    thinking, answer = text.split("</think>")  # exactly one: the model could not write it
    assert thinking and answer.strip()
    assert finished.reasoning_tokens == 5
    assert finished.completion_tokens == 30 and finished.finish_reason == "length"
    alone, _ = run(engine, thinking_job(engine, budget=None, max_tokens=5))
    assert thinking == alone, "the 5 tokens of thinking are the model's own"


def test_a_budget_of_nothing_answers_at_once(engine: GenerationEngine) -> None:
    text, finished = run(engine, thinking_job(engine, budget=0, max_tokens=8))
    assert text.startswith("</think>") and len(text) > len("</think>")
    assert finished.reasoning_tokens == 0 and finished.completion_tokens == 8


def test_no_budget_forces_nothing(engine: GenerationEngine) -> None:
    text, finished = run(engine, thinking_job(engine, budget=None, max_tokens=12))
    assert "</think>" not in text
    assert finished.reasoning_tokens == finished.completion_tokens == 12


def test_the_grammar_goes_on_from_a_forced_marker(engine: GenerationEngine) -> None:
    """Not open: the model writes the start marker (several tokens, the grammar says so); the
    forced end marker is one the grammar allows, and it constrains the answer after it."""
    grammar = 'root ::= "<think>" [a-zA-Z ,.]+ "</think>" [a-zA-Z ,.]+'
    model = engine.model
    closers = tuple((token, -100.0) for token in range(model.n_vocab) if b"</" in model.piece(token))
    job = thinking_job(
        engine,
        prompt_text=rendered(engine, CHAT)[0],
        grammar=grammar,
        logit_bias=closers,
        thinking=Thinking("<think>", "</think>", budget=2),
    )
    text, finished = run(engine, job)
    assert text.startswith("<think>") and text.count("</think>") == 1
    assert finished.reasoning_tokens == 2
    assert all(character.isalpha() or character in " ,." for character in text.split("</think>")[1])


def test_a_forced_marker_that_the_grammar_refuses_passes_it_by(engine: GenerationEngine) -> None:
    """llama.cpp aborts the process on a grammar made to accept what it cannot match."""
    text, finished = run(engine, thinking_job(engine, budget=3, grammar="root ::= [a-z ]+", max_tokens=12))
    thinking, answer = text.split("</think>")
    assert all(character.islower() or character == " " for character in thinking + answer)
    assert finished.reasoning_tokens == 3 and finished.completion_tokens == 12


def test_control_tokens_of_the_markup_are_printed(engine: GenerationEngine) -> None:
    """<|im_start|> (a control token) forced by its logit bias: printed only when it is markup."""
    im_start = engine.model.tokenize("<|im_start|>", add_special=False)
    assert len(im_start) == 1 and llama_cpp.llama_vocab_is_control(engine.model.vocab, im_start[0])
    job = ChatJob(
        messages=(),
        prompt_text=rendered(engine, CHAT)[0],
        max_tokens=3,
        sampling=Sampling(temperature=0),
        logit_bias=((im_start[0], 100.0),),
    )
    hidden, finished = run(engine, job)
    assert hidden == "" and finished.completion_tokens == 3
    shown, _ = run(engine, replace(job, markup=("<|im_start|>", "[TOOL_CALLS]")))
    assert shown == "<|im_start|>" * 3
