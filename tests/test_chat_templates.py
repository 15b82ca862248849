"""inference.templates against the real chat templates of popular families (tests/data/templates,
from llama.cpp's collection): every template renders the usual histories; the markup learned by
rendering is what each family writes; a call the template renders parses back to the same name
and arguments for any arguments and any split of the stream; the forced-call grammar loads in
llama.cpp and accepts the template's own call; failures are one TemplateFailed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.templates import (
    GENERIC_MARKUP,
    AnswerEvent,
    AnswerParser,
    CallArguments,
    CallEnded,
    CallStarted,
    ChatTemplate,
    Content,
    Reasoning,
    TemplateFailed,
    forced_call_grammar,
)
from inference.templates.learn import _widen_left
from inference.templates.parser import _merged
from tests.test_json_schema import GrammarMatcher

TEMPLATES = Path(__file__).parent / "data" / "templates"
FILES = sorted(path.stem for path in TEMPLATES.glob("*.jinja"))

# family: (call style, opener, arguments key, multiple, thinking (start, end), disable kwargs)
EXPECTED: dict[str, tuple[str | None, str, str, bool, tuple[str, str] | None, dict[str, Any] | None]] = {
    "GLM-4.6": ("tagged", "<tool_call>", "", True, ("<think>", "</think>"), {"enable_thinking": False}),
    "HuggingFaceTB-SmolLM3-3B": (None, "", "", False, ("<think>", "</think>"), {"enable_thinking": False}),
    "Mistral-Small-3.2-24B-Instruct-2506": ("name_args", "[TOOL_CALLS]", "", True, None, None),
    "NVIDIA-Nemotron-Nano-v2": ("json", "<TOOLCALL>[", "arguments", True, ("<think>", "</think>"), None),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("json", "<tool_call>", "arguments", True, None, None),
    "Qwen-QwQ-32B": ("json", "<tool_call>", "arguments", True, ("<think>", "</think>"), {"enable_thinking": False}),
    "Qwen-Qwen2.5-7B-Instruct": ("json", "<tool_call>", "arguments", True, None, None),
    "Qwen-Qwen3-0.6B": ("json", "<tool_call>", "arguments", True, ("<think>", "</think>"), {"enable_thinking": False}),
    "Qwen3-Coder": ("tagged", "<tool_call>\n<function=", "", True, None, None),
    "Qwen3.5-4B": ("tagged", "<tool_call>\n<function=", "", True, ("<think>", "</think>"), {"enable_thinking": False}),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": (
        "name_args",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>",
        "",
        True,
        ("<think>", "</think>"),
        {"enable_thinking": False},
    ),
    "deepseek-ai-DeepSeek-V3.1": (
        "name_args",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>",
        "",
        True,
        ("<think>", "</think>"),
        {"enable_thinking": False},
    ),
    "google-gemma-4-31B-it": (None, "", "", False, ("<|channel>thought", "<channel|>"), {"enable_thinking": False}),
    "ibm-granite-granite-4.0": ("json", "<tool_call>", "arguments", True, None, None),
    "meta-llama-Llama-3.1-8B-Instruct": ("json", "", "parameters", False, None, None),
    "meta-llama-Llama-3.2-3B-Instruct": ("json", "", "parameters", False, None, None),
    "microsoft-Phi-3.5-mini-instruct": (None, "", "", False, None, None),
    "mistralai-Ministral-3-14B-Reasoning-2512": ("name_args", "[TOOL_CALLS]", "", True, ("[THINK]", "[/THINK]"), None),
    "mistralai-Mistral-Nemo-Instruct-2407": ("json", "[TOOL_CALLS][", "arguments", True, None, None),
    "openai-gpt-oss-120b": (
        "name_args",
        "to=functions.",
        "",
        False,
        ("<|channel|>analysis<|message|>", "<|end|><|start|>assistant"),
        None,
    ),
    "unsloth-mistral-Devstral-Small-2507": ("name_args", "[TOOL_CALLS]", "", True, None, None),
}
CALLING = [name for name in FILES if EXPECTED[name][0] is not None]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": "Look something up.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
    for name in ("get_weather", "get_time")
]


@pytest.fixture(scope="module")
def matcher(smollm2_file: Path) -> Iterator[GrammarMatcher]:
    grammar_matcher = GrammarMatcher(smollm2_file)
    yield grammar_matcher
    grammar_matcher.close()


@cache
def template(name: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(), bos_token="<s>", eos_token="</s>")


def call(index: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"call{index:05d}", "type": "function", "function": {"name": name, "arguments": arguments}}


def histories() -> Iterator[list[dict[str, Any]]]:
    user = {"role": "user", "content": "What is the weather in Paris?"}
    called = {"role": "assistant", "content": "", "tool_calls": [call(1, "get_weather", {"city": "Paris"})]}
    result = {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": '{"temp": 21}'}
    yield [{"role": "system", "content": "Be brief."}, user, {"role": "assistant", "content": "Sunny."}]
    yield [user, called]
    yield [user, called, result]
    yield [user, called, result, {"role": "assistant", "content": "21 degrees."}, {"role": "user", "content": "Rome?"}]


@pytest.mark.parametrize("name", FILES)
def test_every_template_renders_the_usual_histories(name: str) -> None:
    chat = template(name)
    tools = TOOLS if chat.markup.renders_tools else None
    for messages in histories():
        for generation in (True, False):
            assert chat.render(messages, tools=tools, add_generation_prompt=generation)


@pytest.mark.parametrize("name", FILES)
def test_markup_learned_per_family(name: str) -> None:
    style, opener, arguments_key, multiple, thinking, disable = EXPECTED[name]
    markup = template(name).markup
    if style is None:
        assert markup.calls is None
    else:
        assert markup.calls is not None
        assert (markup.calls.style.value, markup.calls.opener, markup.calls.multiple) == (style, opener, multiple)
        if arguments_key:
            assert markup.calls.arguments_key == arguments_key
    if thinking is None:
        assert markup.thinking is None
    else:
        assert markup.thinking is not None
        assert (markup.thinking.start, markup.thinking.end, markup.thinking.disable) == (*thinking, disable)
    pieces = (markup.calls.section_start, markup.calls.call_start) if markup.calls else ()
    assert set(markup.texts()) >= {text.strip() for text in (*pieces, *(thinking or ())) if text.strip()}


def answer(chat: ChatTemplate, calls: list[dict[str, Any]], tools: list[dict[str, Any]]) -> tuple[str, bool]:
    """What the model would have written for this assistant turn (the template's rendering of
    it, cut out of the history), and whether thinking is open at its start."""
    user = [{"role": "user", "content": "Please help."}]
    prompt = chat.render(user, tools=tools)
    full = chat.render(
        [*user, {"role": "assistant", "content": "", "tool_calls": calls}], tools=tools, add_generation_prompt=False
    )
    cut = 0
    while cut < min(len(prompt), len(full)) and prompt[cut] == full[cut]:
        cut += 1
    cut = _widen_left(full, cut)
    return full[cut:], chat.markup.thinking_open(full[:cut])


def parse(markup: Any, text: str, splits: list[int] = (), **options: Any) -> list[AnswerEvent]:
    parser = AnswerParser(markup, **options)
    events: list[AnswerEvent] = []
    last = 0
    for at in sorted(set(splits)):
        events += parser.feed(text[last:at])
        last = at
    return _merged(events + parser.feed(text[last:]) + parser.finish())


def calls_of(events: list[AnswerEvent]) -> list[tuple[str, Any]]:
    names = [event.name for event in events if isinstance(event, CallStarted)]
    arguments = [json.loads(event.arguments) for event in events if isinstance(event, CallEnded)]
    fragments = {}
    for event in events:
        if isinstance(event, CallArguments):
            fragments[event.index] = fragments.get(event.index, "") + event.text
    assert [fragments.get(index, "") for index in range(len(arguments))] == [
        event.arguments for event in events if isinstance(event, CallEnded)
    ]
    return list(zip(names, arguments))


def schema_of(value: Any) -> dict[str, Any]:
    kinds = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object", list: "array"}
    return {"type": kinds.get(type(value), "null")}


TEXT = st.text(st.sampled_from("abcXYZ 09\"'\\\n\té漢🙂{},:"), max_size=12)
LEAF = (
    TEXT
    | st.integers(-(10**6), 10**6)
    | st.booleans()
    | st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 3))
)
VALUE = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), inner, max_size=3)
    ),
    max_leaves=6,
)
ARGUMENTS = st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), VALUE, min_size=1, max_size=4)


@pytest.mark.parametrize("name", [name for name in CALLING if template(name).markup.renders_tools])
@settings(max_examples=12, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=ARGUMENTS, second=ARGUMENTS, splits=st.lists(st.integers(0, 2000), max_size=6))
def test_a_rendered_call_parses_back(
    name: str, first: dict[str, Any], second: dict[str, Any], splits: list[int]
) -> None:
    chat = template(name)
    markup = chat.markup
    assert markup.calls is not None
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool,
                "description": "A tool.",
                "parameters": {
                    "type": "object",
                    "properties": {key: schema_of(value) for key, value in arguments.items()},
                },
            },
        }
        for tool, arguments in (("lookup", first), ("fetch", second))
    ]
    wanted = [("lookup", first), ("fetch", second)] if markup.calls.multiple else [("lookup", first)]
    text, thinking_open = answer(chat, [call(index + 1, *pair) for index, pair in enumerate(wanted)], tools)
    whole = parse(markup, text, tools=tools, thinking_open=thinking_open)
    assert calls_of(whole) == wanted
    assert whole == parse(
        markup, text, [at % (len(text) + 1) for at in splits], tools=tools, thinking_open=thinking_open
    )
    opener = markup.calls.opener
    assert not any(opener and opener in event.text for event in whole if isinstance(event, (Content, Reasoning)))


@pytest.mark.parametrize(
    "name",
    [
        name
        for name in FILES
        if EXPECTED[name][4] is not None and EXPECTED[name][0] != "tagged" or name in ("Qwen3.5-4B", "GLM-4.6")
    ],
)
def test_rendered_reasoning_parses_back_as_reasoning(name: str) -> None:
    chat = template(name)
    markup = chat.markup
    assert markup.thinking is not None
    thought = "First, the sky.\nThen the sea."
    user = [{"role": "user", "content": "Hi"}]
    full = chat.render(
        [*user, {"role": "assistant", "content": "Hello!", "reasoning_content": thought}],
        add_generation_prompt=False,
        tools=TOOLS if markup.renders_tools else None,
    )
    if thought in full:
        text = full[full.rindex(markup.thinking.start, 0, full.index(thought)) :]
    else:  # the template drops reasoning_content from the history: the markers as the model writes them
        text = f"{markup.thinking.start}\n{thought}\n{markup.thinking.end}\n\nHello!"
    events = parse(markup, text)
    assert events[0] == Reasoning(thought)
    assert isinstance(events[1], Content) and events[1].text.startswith("Hello!")


def test_thinking_open_follows_the_generation_prompt() -> None:
    r1, qwen3 = template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"), template("Qwen-Qwen3-0.6B")
    user = [{"role": "user", "content": "Hi"}]
    assert r1.markup.thinking_open(r1.render(user, kwargs={"enable_thinking": True}))
    assert not qwen3.markup.thinking_open(qwen3.render(user, kwargs={"enable_thinking": False}))
    assert template("Qwen3.5-4B").markup.thinking_open(template("Qwen3.5-4B").render(user))


def test_thinking_markup_stays_out_of_content_and_calls_inside_it_are_not_calls() -> None:
    markup = template("Qwen-Qwen3-0.6B").markup
    text = '<think>\nmaybe <tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>\n</think>\n\nOK'
    events = parse(markup, text, tools=TOOLS)
    assert events == [
        Reasoning('maybe <tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'),
        Content("OK"),
    ]
    assert parse(markup, text, split_thinking=False, tools=TOOLS) == [Content(text)]
    assert parse(markup, "thinking on", thinking_open=True) == [Reasoning("thinking on")]


def test_unknown_tools_stay_content_and_cut_off_calls_close() -> None:
    markup = template("Qwen-Qwen3-0.6B").markup
    unknown = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    assert parse(markup, unknown, tools=TOOLS) == [Content(unknown)]
    cut = parse(markup, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', tools=TOOLS)
    assert cut[-1] == CallEnded(0, '{"city": "Par"}')
    tagged = template("Qwen3-Coder").markup  # cut before its first argument's value ends
    cut = parse(tagged, "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", tools=TOOLS)
    assert cut[-1] == CallEnded(0, "{}")
    whole = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</func"
    assert parse(tagged, whole, tools=TOOLS)[-1] == CallEnded(0, '{"city": "Paris"}')  # cut after its arguments
    generic = parse(GENERIC_MARKUP, ' {"name": "get_weather", "arguments": {"city": "Rome"}} ', tools=TOOLS)
    assert calls_of(generic) == [("get_weather", {"city": "Rome"})]
    assert parse(GENERIC_MARKUP, "Sure {not a call}", tools=TOOLS) == [Content("Sure {not a call}")]


@pytest.mark.parametrize("name", [name for name in CALLING if template(name).markup.renders_tools])
def test_forced_call_grammar_loads_and_accepts_the_templates_own_call(name: str, matcher: GrammarMatcher) -> None:
    chat = template(name)
    markup = chat.markup
    assert markup.calls is not None
    for parallel in (False, True):
        grammar = forced_call_grammar(markup, TOOLS, parallel=parallel, thinking_open=False)
        assert llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
    calls = [call(1, "get_weather", {"city": "Paris", "days": 3})]
    own, thinking_open = own_calls(chat, calls)
    grammar = forced_call_grammar(markup, TOOLS, parallel=False, thinking_open=thinking_open)
    assert matcher.accepts(grammar, own), own
    if markup.calls.multiple:  # two calls, as the template writes them, and never a doubled opener
        two, _ = own_calls(chat, [*calls, call(2, "get_weather", {"city": "Rome", "days": 1})])
        parallel = forced_call_grammar(markup, TOOLS, parallel=True, thinking_open=thinking_open)
        assert matcher.accepts(parallel, two), two
        doubled = own.replace(markup.calls.call_start, markup.calls.call_start * 2, 1)
        assert doubled == own or not matcher.accepts(parallel, doubled)


def own_calls(chat: ChatTemplate, calls: list[dict[str, Any]]) -> tuple[str, bool]:
    """The template's own writing of these calls (what follows them cut off), and whether
    thinking is open before them."""
    text, thinking_open = answer(chat, calls, TOOLS)
    events = parse(chat.markup, text, tools=TOOLS, thinking_open=thinking_open)
    ended = max(index for index, event in enumerate(events) if isinstance(event, CallEnded))
    return text[: len(text) - len(events[ended + 1].text) if ended + 1 < len(events) else len(text)], thinking_open


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% if %}", "Expected an expression, got 'end of statement block' (line 1)"),
        ("{{ raise_exception('No tools, please.') }}", "No tools, please."),
        ("{{ undefined_function() }}", "'undefined_function' is undefined"),
        ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe."),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "the template recursed too deeply"),
    ],
)
def test_failures_are_one_line_template_failed(source: str, message: str) -> None:
    with pytest.raises(TemplateFailed) as failed:
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])
    assert str(failed.value) == message


def test_the_header_a_template_writes_before_an_answer_is_no_answer() -> None:
    """gpt-oss's answer begins with its final channel's header when it does not think first."""
    markup = template("openai-gpt-oss-120b").markup
    assert markup.content_start == "<|channel|>final<|message|>" and markup.content_start in markup.texts()
    text = "<|channel|>final<|message|>Hello <there>"
    assert parse(markup, text) == [Content("Hello <there>")]
    for cut in range(len(text)):  # however the text arrives
        assert parse(markup, text, [cut]) == [Content("Hello <there>")]
    assert parse(markup, text, split_thinking=False) == [Content(text)]  # raw: as written
    assert all(not template(name).markup.content_start for name in CALLING if "gpt-oss" not in name)
    # Its thinking ends the same way before an answer and before a call.
    thought = "<|channel|>analysis<|message|>Paris, then.<|end|><|start|>assistant"
    answered = parse(markup, thought + "<|channel|>final<|message|>Sunny.")
    assert answered == [Reasoning("Paris, then."), Content("Sunny.")]
    called = parse(
        markup,
        thought + ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        tools=TOOLS,
    )
    assert called[0] == Reasoning("Paris, then.") and calls_of(called) == [("get_weather", {"city": "Paris"})]
