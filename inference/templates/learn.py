"""Learning a template's markup by rendering it, as llama.cpp's chat-diff-analyzer does: render
an assistant turn with plain content and with one or two probe calls, cut the common parts away,
and read the markers around the probe's name, arguments and values; render reasoning and find
what surrounds it. Where rendering reveals no thinking markers (templates that drop
`reasoning_content`), a short list of known marker pairs found in the template's source is the
fallback. Nothing here switches on a template's name.

Pure and deterministic; a template that fails on the probes simply has less markup.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from inference.templates.markup import CallMarkup, CallStyle, Markup, ThinkingMarkup
from inference.templates.render import TemplateFailed

if TYPE_CHECKING:
    from inference.templates.render import ChatTemplate

_USER = {"role": "user", "content": "Hello there"}
_CONTENT = "CONTENT_PROBE_7"
_REASON = "REASON_PROBE_7"
_NAMES = ("probe_fn_alpha", "probe_fn_beta")
_ARGS = ({"k_alpha": "v_alpha", "k_beta": 4711}, {"k_alpha": "v_gamma", "k_beta": 815})
_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": "A probe.",
            "parameters": {
                "type": "object",
                "properties": {"k_alpha": {"type": "string"}, "k_beta": {"type": "integer"}},
                "required": ["k_alpha"],
            },
        },
    }
    for name in _NAMES
]
# Known thinking markers, for templates that render no reasoning: (start, end).
_KNOWN_THINKING = (
    ("<think>", "</think>"),
    ("[THINK]", "[/THINK]"),
    ("<|channel>thought", "<channel|>"),
    ("<seed:think>", "</seed:think>"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
)
_THINKING_SWITCHES = ("enable_thinking", "thinking", "enable_reasoning")


def probe_call(index: int) -> dict[str, Any]:
    """The probe's tool call number `index` (ids of 9 alphanumerics, as Mistral's templates demand)."""
    return {
        "id": f"call{index:05d}",
        "type": "function",
        "function": {"name": _NAMES[index], "arguments": _ARGS[index]},
    }


class _Probe:
    def __init__(self, template: ChatTemplate) -> None:
        self.template = template

    def render(self, assistant: dict[str, Any] | None, kwargs: dict[str, Any] | None = None) -> str | None:
        """The user's probe turn then `assistant`'s, or the generation prompt (None); None if it fails."""
        messages = [_USER] if assistant is None else [_USER, {"role": "assistant", **assistant}]
        try:
            return self.template.render(messages, tools=_TOOLS, add_generation_prompt=assistant is None, kwargs=kwargs)
        except TemplateFailed:
            return None

    def answer_start(self, rendered: str) -> int:
        """Where the model's own text begins in `rendered`: after the longest generation prompt
        (with any thinking switch) that is a prefix of it; else after their common part."""
        prompts = [self.render(None)]
        prompts += [self.render(None, kwargs={key: value}) for key in _THINKING_SWITCHES for value in (True, False)]
        starts = [len(prompt) for prompt in prompts if prompt and rendered.startswith(prompt)]
        if starts:
            return max(starts)
        content = self.render({"content": _CONTENT}) or ""
        return _widen_left(rendered, _common_prefix(rendered, content))


def learn_markup(template: ChatTemplate) -> Markup:
    """The markup of `template`, learned by rendering probe conversations."""
    probe = _Probe(template)
    renders_tools = _renders_tools(template)
    calls = _learn_calls(probe)
    thinking = _learn_thinking(probe, calls)
    return Markup(
        renders_tools=renders_tools, calls=calls, thinking=thinking, content_start=_content_start(probe, thinking)
    )


def _renders_tools(template: ChatTemplate) -> bool:
    description = "Probe description 4711."
    tools = [{"type": "function", "function": {"name": "probe_tool", "description": description, "parameters": {}}}]
    try:
        return description in template.render([_USER], tools=tools)
    except TemplateFailed:
        return False


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_suffix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _opener(text: str, cut: int) -> int:
    """Where a marker that `cut` splits begins (a `<` or `[` shortly before it, not closed and
    on the same line), or -1."""
    window = text[max(0, cut - 32) : cut]
    at = max(window.rfind("<"), window.rfind("["))
    if at < 0 or max(window.rfind(">"), window.rfind("]"), window.rfind("\n")) > at:
        return -1
    return cut - len(window) + at


def _widen_left(text: str, cut: int) -> int:
    """`cut` (a start) moved left out of a marker it splits (`<` + `TOOLCALL>`)."""
    at = _opener(text, cut)
    return cut if at < 0 else at


def _widen_right(text: str, cut: int) -> int:
    """`cut` (an end) moved right out of a marker it splits (`<|call` + `|>`)."""
    if _opener(text, cut) >= 0:
        found = re.compile(r"[>\]]").search(text, cut)
        if found:
            return found.end()
    return cut


def _suffix(a: str, b: str) -> str:
    """The common end of `a` and `b`, not starting inside a marker (`>\n<parameter=` is
    `\n<parameter=`)."""
    n = _common_suffix(a, b)
    tail = a[len(a) - n :] if n else ""
    closes = re.match(r"[^<\[]*?[>\]]", tail)
    return tail[closes.end() :] if closes else tail


def _prefix(a: str, b: str) -> str:
    """The common start of `a` and `b`, not ending inside a marker."""
    head = a[: _common_prefix(a, b)]
    at = _opener(head, len(head))
    return head if at < 0 else head[:at]


def _call_section(probe: _Probe, calls: int) -> str | None:
    """The text the probe's `calls` calls add where plain content would be."""
    plain = probe.render({"content": _CONTENT})
    called = probe.render({"content": "", "tool_calls": [probe_call(index) for index in range(calls)]})
    if plain is None or called is None or _NAMES[calls - 1] not in called:
        return None
    content_at = plain.index(_CONTENT)
    start = _widen_left(called, min(_common_prefix(plain, called), content_at))
    tail = min(_common_suffix(plain, called), len(plain) - content_at - len(_CONTENT), len(called) - start)
    section = called[start : _widen_right(called, len(called) - tail)]
    turn_end = plain[content_at + len(_CONTENT) :].strip()
    return section[: section.index(turn_end)] if turn_end and turn_end in section else section


def _json_objects(text: str, start: int = 0) -> list[tuple[int, int, Any]]:
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(r"[{\[]", text[start:]):
        at = start + match.start()
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            continue
        found.append((at, end, value))
    return found


def _find_call(section: str, index: int, start: int) -> tuple[int, int, dict[str, Any]] | None:
    """The span of probe call `index` in `section` (from `start`) and the fields it shows."""
    name, args = _NAMES[index], _ARGS[index]
    at = section.find(name, start)
    if at < 0:
        return None
    for begin, end, value in _json_objects(section, start):
        if isinstance(value, dict) and begin < at < end:
            keys = {k for k, v in value.items() if v == name}, {k for k, v in value.items() if v == args}
            if keys[0] and keys[1]:
                ids = [k for k, v in value.items() if v == probe_call(index)["id"]]
                fields = {"name_key": min(keys[0]), "arguments_key": min(keys[1]), "id_key": ids[0] if ids else ""}
                return begin, end, {"style": CallStyle.JSON, **fields}
    for begin, end, value in _json_objects(section, at):
        if value == args:
            return at, end, {"style": CallStyle.NAME_ARGS, **_name_end(section[at + len(name) : begin])}
    return _find_tagged(section, index, at)


def _name_end(between: str) -> dict[str, str]:
    """Between name and arguments: name_end, or an id marker, the probe's id, then name_end."""
    found = re.search(r"call\d{5}", between)
    if found is None:
        return {"name_end": between}
    return {"id_marker": between[: found.start()], "name_end": between[found.end() :]}


def _find_tagged(section: str, index: int, at: int) -> tuple[int, int, dict[str, Any]] | None:
    """Per-argument markup: key and value of each argument, in order, after the name."""
    name, args = _NAMES[index], _ARGS[index]
    cursor, gaps = at + len(name), []
    for key, value in args.items():
        written = value if isinstance(value, str) else json.dumps(value)
        key_at = section.find(key, cursor)
        value_at = section.find(written, key_at + len(key))
        if key_at < 0 or value_at < 0:
            return None
        gaps += [section[cursor:key_at], section[key_at + len(key) : value_at]]
        cursor = value_at + len(written)
    if len(gaps) < 4:
        return None  # one argument cannot tell where a value ends from where the next key starts
    key_start = section[: at + len(name)][-0:] and _suffix(gaps[0], gaps[2])
    value_end = gaps[2][: len(gaps[2]) - len(key_start)]
    if not key_start or not section.startswith(value_end, cursor):
        return None
    fields = {"name_end": gaps[0][: len(gaps[0]) - len(key_start)], "key_start": key_start}
    return (
        at,
        cursor + len(value_end),
        {"style": CallStyle.TAGGED, **fields, "key_end": gaps[1], "value_end": value_end},
    )


def _learn_calls(probe: _Probe) -> CallMarkup | None:
    one = _call_section(probe, 1)
    found = _find_call(one, 0, 0) if one else None
    if one is None or found is None:
        return None
    begin, end, fields = found
    pre, post = one[:begin], one[end:]
    two = _call_section(probe, 2)
    first = _find_call(two, 0, 0) if two else None
    second = _find_call(two, 1, first[1]) if two and first else None
    if two is None or first is None or second is None or second[2]["style"] != fields["style"]:
        return CallMarkup(call_start=pre, call_end=post, **fields)
    between = two[first[1] : second[0]]
    call_start = _suffix(pre, between)
    rest = between[: len(between) - len(call_start)]
    call_end = _prefix(rest, post)
    return CallMarkup(
        section_start=pre[: len(pre) - len(call_start)],
        section_end=post[len(call_end) :],
        call_start=call_start,
        call_end=call_end,
        separator=rest[len(call_end) :],
        multiple=True,
        **fields,
    )


def _learn_thinking(probe: _Probe, calls: CallMarkup | None) -> ThinkingMarkup | None:
    markers = _rendered_thinking(probe, calls) or _known_thinking(probe.template.source)
    if markers is None:
        return None
    return ThinkingMarkup(start=markers[0], end=markers[1], disable=_disable(probe))


def _rendered_thinking(probe: _Probe, calls: CallMarkup | None) -> tuple[str, str] | None:
    """The markers around rendered reasoning. Its end is what closes it before an answer and
    before a call alike (gpt-oss: `<|end|><|start|>assistant`, then a channel or a recipient),
    so that the thinking ends, and a budget's forced end leaves the model its choice, either way."""
    blocks = [{"type": "thinking", "thinking": _REASON}, {"type": "text", "text": _CONTENT}]
    before_call: dict[str, Any] = {"content": "", "reasoning_content": _REASON, "tool_calls": [probe_call(0)]}
    variants: list[dict[str, Any]] = [
        {"content": _CONTENT, "reasoning_content": _REASON},
        {"content": _CONTENT, "thinking": _REASON},
        {"content": blocks},
        before_call,
    ]
    found = [markers for markers in (_reasoning_markers(probe, calls, assistant) for assistant in variants) if markers]
    if not found:
        return None
    start, end = found[0]
    call_end = _reasoning_markers(probe, calls, before_call)
    if call_end is not None and (common := end[: _common_prefix(end, call_end[1])].strip()):
        end = common
    return start, end


def _reasoning_markers(probe: _Probe, calls: CallMarkup | None, assistant: dict[str, Any]) -> tuple[str, str] | None:
    """The text before and after the probe's reasoning in `assistant`'s rendering (up to its
    content or call), if the template renders it."""
    rendered = probe.render(assistant)
    if rendered is None or _REASON not in rendered or "'thinking'" in rendered:
        return None
    reason_at = rendered.index(_REASON)
    after = reason_at + len(_REASON)
    stop = rendered.find(_CONTENT, after)
    if stop < 0 and calls is not None:
        stop = rendered.find(calls.opener or _NAMES[0], after)
    start = rendered[probe.answer_start(rendered) : reason_at].strip()
    end = rendered[after:stop].strip() if stop >= 0 else ""
    return (start, end) if start and end else None


def _content_start(probe: _Probe, thinking: ThinkingMarkup | None) -> str:
    """What the template writes before an answer's own text (gpt-oss: its final channel's
    header), which the model writes too; "" where that is an empty thinking block (read as
    thinking) or nothing."""
    rendered = probe.render({"content": _CONTENT})
    if rendered is None or _CONTENT not in rendered:
        return ""
    start = rendered[probe.answer_start(rendered) : rendered.index(_CONTENT)].strip()
    if thinking is not None and (thinking.start in start or thinking.end in start):
        return ""
    return start


def _known_thinking(source: str) -> tuple[str, str] | None:
    for start, end in _KNOWN_THINKING:
        if start in source and end in source:
            return start, end
    return None


def _disable(probe: _Probe) -> dict[str, Any] | None:
    """The first thinking switch in the source whose False changes the generation prompt."""
    for key in _THINKING_SWITCHES:
        if re.search(rf"\b{key}\b", probe.template.source):
            on, off = probe.render(None, kwargs={key: True}), probe.render(None, kwargs={key: False})
            if on is not None and off is not None and on != off:
                return {key: False}
    return None
