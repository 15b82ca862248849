"""GBNF pieces for JSON output that know llama.cpp's grammar syntax and nothing of JSON Schema:
literals, sets of characters written as JSON string characters, bounded repetitions and ranges
of decimal numbers. `inference.grammar` assembles them into whole grammars.

Every piece is text that llama.cpp's parser (src/llama-grammar.cpp) accepts: escapes only of
the kinds it knows, no empty character classes, no repetition count above its limit, no
repetition of something that can match nothing. Inside a JSON string each character has one
spelling (its *canonical* JSON encoding: raw, or `\\"`, `\\\\`, `\\b \\f \\n \\r \\t`, or
`\\u00xx` for other control characters), so a set of strings is a set of decoded values too.

Number ranges are built digit by digit as in llama.cpp's json-schema-to-grammar
(`_generate_min_max_int` / `build_min_max_int`; MIT licence, (c) the ggml authors), extended to
fractions and exclusive bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)
# llama.cpp refuses counts over 2000 in `x{m,n}` (and treats a larger n as no limit at all).
REPEAT_BLOCK = 1000
# Numbers with at most this many significant digits survive a trip through a float64 (DBL_DIG):
# distinct ones stay distinct and ordered, so comparing them as decimals is comparing them as
# floats, whatever the client parses them into.
SIGNIFICANT_DIGITS = 15
# Integer parts of numbers (with fractions) whose range has no upper bound.
UNBOUNDED_INTEGER_PART_DIGITS = 9
# Integers: bounds beyond this many digits are as good as none.
MAX_INTEGER_DIGITS = 18
# Strings whose value must differ from given ones: the longest such string.
MAX_EXCLUDED_LENGTH = 200
MAX_SHARED_DEPTH = 32  # branchings of literal_alternatives' tree, nested in one another
# Characters of excluded strings, after their common prefixes are shared: each costs about 150
# bytes of grammar, so more would be refused by the grammar's size anyway, after the work.
MAX_EXCLUDED_NODES = 3000
_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
# Strings sharing their beginnings: each character leads to the rest; "" marks where one ends.
_Trie = dict[str, "_Trie"]


class GrammarTooLarge(ValueError):
    """A count that no grammar of a sane size can enforce."""


@dataclass(frozen=True)
class CharSet:
    """A set of code points, as sorted, disjoint, non-adjacent inclusive ranges."""

    ranges: tuple[tuple[int, int], ...] = ()

    @staticmethod
    def of(*ranges: tuple[int, int]) -> CharSet:
        merged: list[tuple[int, int]] = []
        for low, high in sorted(ranges):
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
            else:
                merged.append((low, high))
        return CharSet(tuple(merged))

    @staticmethod
    def chars(text: str) -> CharSet:
        return CharSet.of(*((ord(c), ord(c)) for c in text))

    def __or__(self, other: CharSet) -> CharSet:
        return CharSet.of(*self.ranges, *other.ranges)

    def __invert__(self) -> CharSet:
        gaps, start = [], 0
        for low, high in self.ranges:
            if low > start:
                gaps.append((start, low - 1))
            start = high + 1
        if start <= MAX_CODE_POINT:
            gaps.append((start, MAX_CODE_POINT))
        return CharSet(tuple(gaps))

    def __and__(self, other: CharSet) -> CharSet:
        return ~(~self | ~other)

    def __sub__(self, other: CharSet) -> CharSet:
        return self & ~other

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __contains__(self, char: str) -> bool:
        return any(low <= ord(char) <= high for low, high in self.ranges)


# Every character a JSON string can hold (UTF-8 has no surrogates), and those it holds raw.
ANY_CHAR = ~CharSet.of(SURROGATES)
_RAW = ANY_CHAR - CharSet.of((0, 0x1F)) - CharSet.chars('"\\')


def json_char(char: str) -> str:
    """The canonical JSON spelling of one character inside a string."""
    code = ord(char)
    if char in '"\\':
        return "\\" + char
    if code in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[code]
    if code < 0x20 or SURROGATES[0] <= code <= SURROGATES[1]:
        return f"\\u{code:04x}"
    return char


def _hex(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


def literal(text: str) -> str:
    """A GBNF literal matching exactly `text` (which must not be empty)."""
    escaped = "".join("\\" + c if c in '"\\' else c if " " <= c <= "~" else _hex(ord(c)) for c in text)
    return f'"{escaped}"'


def literal_alternatives(texts: list[str]) -> str:
    """GBNF for exactly one of `texts` (distinct, none empty), their common prefixes written once.

    Alternatives that share a beginning cost llama.cpp's grammar sampler a check per vocabulary
    token for each of them at every step while they stay apart: an enum of 2,000 strings that
    begin alike took 0.75 s a token as a flat list on SmolLM2, 5 ms as this tree. Below
    MAX_SHARED_DEPTH branchings the rest of a branch is a flat list: llama.cpp's grammar parser
    recurses once per nested group.
    """
    trie: _Trie = {}
    for text in texts:
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}
    return _branches(trie, "", 0)


def _branches(node: _Trie, prefix: str, depth: int) -> str:
    """The texts below `node` (each beginning with `prefix`, not yet written)."""
    while len(node) == 1 and "" not in node:  # one way on: part of the same literal
        char, node = next(iter(node.items()))
        prefix += char
    if depth >= MAX_SHARED_DEPTH:
        return " | ".join(literal(prefix + rest) for rest in _ends(node))
    head = literal(prefix) if prefix else ""
    alternatives = [_branches(child, char, depth + 1) for char, child in node.items() if char]
    if not alternatives:
        return head
    # Two or more ways on, or one and the end of a text here (a number that begins another).
    return f"{head} ({' | '.join(alternatives)}){'?' if '' in node else ''}".strip()


def _ends(node: _Trie) -> list[str]:
    """Every text below `node`, whole (without recursion: a text may be long)."""
    ends, pending = [], [(node, "")]
    while pending:
        node, text = pending.pop()
        for char, child in node.items():
            if char:
                pending.append((child, text + char))
            else:
                ends.append(text)
    return ends


def _class_char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else _hex(code)


def char_class(chars: CharSet) -> str:
    """A GBNF character class matching exactly the (non-empty) set, negated when shorter."""
    complement = ~chars
    negated = len(complement.ranges) < len(chars.ranges)
    listed = complement if negated else chars
    items = "".join(
        _class_char(low) if low == high else f"{_class_char(low)}-{_class_char(high)}" for low, high in listed.ranges
    )
    return f"[{'^' if negated else ''}{items}]"


def json_chars(chars: CharSet) -> str | None:
    """Alternatives matching the canonical JSON spelling of each character of the set, for use
    inside a string (parenthesise before use in a sequence); None for no character."""
    chars = chars & ANY_CHAR
    alternatives = []
    raw = chars & _RAW
    if raw:
        alternatives.append(char_class(raw))
    escaped = chars - _RAW
    letters = "".join(json_char(chr(code))[1] for code in (0x22, 0x5C, *_SHORT_ESCAPES) if chr(code) in escaped)
    if letters:
        alternatives.append(f'"\\\\" {char_class(CharSet.chars(letters))}')
    for high in "01":
        digits = "".join(
            digit
            for digit in "0123456789abcdef"
            if int(high + digit, 16) not in _SHORT_ESCAPES and chr(int(high + digit, 16)) in escaped
        )
        if digits:
            alternatives.append(f'"\\\\u00{high}" {char_class(CharSet.chars(digits))}')
    return " | ".join(alternatives) or None


def json_string_literal(text: str) -> str:
    """A GBNF literal of `text` as a JSON string, in canonical spelling."""
    return literal('"' + "".join(json_char(c) for c in text) + '"')


def repeat(item: str, low: int, high: int | None) -> str:
    """`item` (a rule name, class or literal) `low` to `high` (None: any number of) times, in
    llama.cpp's syntax and within its limits; "" for exactly zero times."""
    return _join(_exact_repeat(item, low), _optional_repeat(item, None if high is None else high - low))


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _exact_repeat(item: str, count: int) -> str:
    if count <= REPEAT_BLOCK:
        return {0: "", 1: item}.get(count, f"{item}{{{count}}}")
    blocks, rest = divmod(count, REPEAT_BLOCK)
    if blocks > REPEAT_BLOCK:
        raise GrammarTooLarge(f"counts above {REPEAT_BLOCK * REPEAT_BLOCK} are not supported")
    return _join(_exact_repeat(f"({item}{{{REPEAT_BLOCK}}})", blocks), _exact_repeat(item, rest))


def _optional_repeat(item: str, most: int | None) -> str:
    """`item` zero to `most` times; unambiguous, in blocks when `most` is over llama.cpp's limit."""
    if most is None:
        return f"{item}*"
    if most <= REPEAT_BLOCK:
        return {0: "", 1: f"{item}?"}.get(most, f"{item}{{0,{most}}}")
    blocks, rest = divmod(most, REPEAT_BLOCK)
    if blocks > REPEAT_BLOCK:
        raise GrammarTooLarge(f"counts above {REPEAT_BLOCK * REPEAT_BLOCK} are not supported")
    block = f"({item}{{{REPEAT_BLOCK}}})"
    fewer = _join(_optional_repeat(block, blocks - 1), _optional_repeat(item, REPEAT_BLOCK - 1))
    return f"({fewer} | {_join(_exact_repeat(block, blocks), _optional_repeat(item, rest))})"


# Numbers.


@dataclass(frozen=True)
class Bound:
    value: Decimal
    inclusive: bool


def number_range(lower: Bound | None, upper: Bound | None, *, integer: bool) -> str | None:
    """GBNF for JSON numbers between the bounds, written without exponent and, for integers,
    without fraction (so in canonical form); None if no such number exists. Numbers with a
    fraction keep to SIGNIFICANT_DIGITS digits."""
    alternatives = []
    if upper is None or upper.value > 0 or (upper.value == 0 and upper.inclusive):
        low = lower if lower is not None and lower.value >= 0 else Bound(Decimal(0), True)
        alternatives.append(_magnitudes(low, upper, integer))
    if lower is None or lower.value < 0:
        # Negative numbers are "-" and a magnitude above zero (never "-0").
        smallest = Bound(Decimal(0), False)
        if upper is not None and upper.value < 0:
            smallest = Bound(-upper.value, upper.inclusive)
        largest = None if lower is None else Bound(-lower.value, lower.inclusive)
        magnitudes = _magnitudes(smallest, largest, integer)
        alternatives.append(magnitudes and f'"-" ({magnitudes})')
    return " | ".join(alternative for alternative in alternatives if alternative) or None


@dataclass(frozen=True)
class _Fraction:
    """A bound on the digits after the point (a fraction of one)."""

    digits: str  # without trailing zeros
    strict: bool


def _magnitudes(low: Bound, high: Bound | None, integer: bool) -> str | None:
    """Non-negative numbers from `low` (>= 0) to `high`: an integer part, then maybe a fraction."""
    if integer:
        digits = len(str(int(high.value))) if high else max(SIGNIFICANT_DIGITS, len(str(int(low.value))))
        digits = min(digits, MAX_INTEGER_DIGITS)
        room = 0
    else:
        digits = len(str(int(high.value))) if high else max(UNBOUNDED_INTEGER_PART_DIGITS, len(str(int(low.value))))
        digits = min(digits, SIGNIFICANT_DIGITS)
        room = SIGNIFICANT_DIGITS - digits
    ceiling = Bound(Decimal(10) ** digits, False)
    if high is None or high.value >= ceiling.value:
        high = ceiling
    low_int, low_fraction = _split(low)
    high_int, high_fraction = _split(high)
    if low_int > high_int:
        return None
    if low_int == high_int:
        pieces = [_with_fraction(low_int, low_fraction, high_fraction, room)]
    else:
        middle = _naturals(low_int + 1, high_int - 1)
        if middle and room:
            middle = f'({middle}) ("." [0-9]{{1,{room}}})?'
        first = _with_fraction(low_int, low_fraction, None, room)
        pieces = [first, middle, _with_fraction(high_int, None, high_fraction, room)]
    return " | ".join(piece for piece in pieces if piece) or None


def _split(bound: Bound) -> tuple[int, _Fraction]:
    whole = int(bound.value)  # bounds here are >= 0: int() is floor
    digits = format(bound.value - whole, "f").partition(".")[2].rstrip("0")
    return whole, _Fraction(digits, not bound.inclusive)


def _with_fraction(whole: int, lower: _Fraction | None, upper: _Fraction | None, room: int) -> str | None:
    """`whole` and then a fraction between the bounds (none at all stands for .0)."""
    fraction = _fraction(lower, upper, room)
    if fraction is None:
        return None
    return f"{literal(str(whole))} {fraction}".strip()


def _fraction(lower: _Fraction | None, upper: _Fraction | None, room: int) -> str | None:
    """`"." digits` (at most `room`) between the bounds, or nothing when .0 is between them."""
    digits = _fraction_digits(lower, upper, room)
    if digits is None:
        return "" if _zero_fits(lower, upper) else None
    tail = f'"." ({digits})'
    return f"({tail})?" if _zero_fits(lower, upper) else tail


def _zero_fits(lower: _Fraction | None, upper: _Fraction | None) -> bool:
    """Whether a fraction of all zeros is between the bounds."""
    above_lower = lower is None or (not lower.digits and not lower.strict)
    below_upper = upper is None or bool(upper.digits) or not upper.strict
    return above_lower and below_upper


def _fraction_digits(lower: _Fraction | None, upper: _Fraction | None, room: int) -> str | None:
    """Alternatives for 1 to `room` fraction digits whose value is between the bounds."""
    if room == 0:
        return None
    if lower is not None and not lower.digits and not lower.strict:
        lower = None
    if lower is None and upper is None:
        return f"[0-9]{{1,{room}}}"
    if lower is None and upper is not None and not upper.digits:
        return None if upper.strict else repeat('"0"', 1, room)
    first_low = (lower.digits[:1] or "0") if lower else "0"
    first_high = (upper.digits[:1] or "0") if upper else "9"
    alternatives, free = [], []
    for digit in "0123456789":
        if not first_low <= digit <= first_high:
            continue
        on_lower = lower if lower is not None and digit == first_low else None
        on_upper = upper if upper is not None and digit == first_high else None
        if on_lower is None and on_upper is None:
            free.append(digit)
            continue
        rest_lower = None if on_lower is None else _Fraction(on_lower.digits[1:], on_lower.strict)
        rest_upper = None if on_upper is None else _Fraction(on_upper.digits[1:], on_upper.strict)
        rest = _fraction_digits(rest_lower, rest_upper, room - 1)
        zero = _zero_fits(rest_lower, rest_upper)
        if rest is not None:
            alternatives.append(f'"{digit}" ({rest}){"?" if zero else ""}')
        elif zero:
            alternatives.append(f'"{digit}"')
    if free:
        tail = f" [0-9]{{0,{room - 1}}}" if room > 1 else ""
        alternatives.append(char_class(CharSet.chars("".join(free))) + tail)
    return " | ".join(alternatives) or None


def _naturals(low: int, high: int) -> str | None:
    """Integers from `low` to `high` (both >= 0), written without leading zeros."""
    if low > high:
        return None
    low_text, high_text = str(low), str(high)
    if len(low_text) == len(high_text):
        return _same_length(low_text, high_text)
    pieces = [_same_length(low_text, "9" * len(low_text))]
    between = (len(low_text), len(high_text) - 2)  # lengths strictly between, less the first digit
    if between[0] <= between[1]:
        pieces.append(f"[1-9] [0-9]{{{between[0]},{between[1]}}}")
    pieces.append(_same_length("1" + "0" * (len(high_text) - 1), high_text))
    return " | ".join(pieces)


def _same_length(low: str, high: str) -> str:
    """Digit strings of one length from `low` to `high` (low <= high), digit by digit."""
    common = 0
    while common < len(low) and low[common] == high[common]:
        common += 1
    prefix = literal(low[:common]) if common else ""
    if common == len(low):
        return prefix
    first_low, first_high = low[common], high[common]
    rest_low, rest_high = low[common + 1 :], high[common + 1 :]
    width = len(rest_low)
    if not width:
        return f"{prefix} {_digit_range(first_low, first_high)}".strip()
    low_full, high_full = rest_low == "0" * width, rest_high == "9" * width
    start = first_low if low_full else chr(ord(first_low) + 1)
    end = first_high if high_full else chr(ord(first_high) - 1)
    alternatives = []
    if not low_full:
        alternatives.append(f'"{first_low}" ({_same_length(rest_low, "9" * width)})')
    if start <= end:
        alternatives.append(f"{_digit_range(start, end)} {repeat('[0-9]', width, width)}")
    if not high_full:
        alternatives.append(f'"{first_high}" ({_same_length("0" * width, rest_high)})')
    return f"{prefix} ({' | '.join(alternatives)})".strip()


def _digit_range(low: str, high: str) -> str:
    return f"[{low}]" if low == high else f"[{low}-{high}]"


def json_string_except(excluded: list[str], char_rule: str) -> str:
    """GBNF for JSON strings (quotes included) whose value is none of `excluded`; `char_rule`
    names a rule for any one character. Canonical spelling makes "another spelling" "another
    value", so a key written this way never repeats a declared one."""
    if any(len(text) > MAX_EXCLUDED_LENGTH for text in excluded):
        raise GrammarTooLarge(f"property names over {MAX_EXCLUDED_LENGTH} characters are too long to exclude")
    trie: _Trie = {}
    nodes = 0
    for text in excluded:
        node = trie
        for char in text:
            nodes += char not in node
            node = node.setdefault(char, {})
        node[""] = {}  # a listed string ends here
    if nodes > MAX_EXCLUDED_NODES:
        raise GrammarTooLarge(
            f"property names of {nodes:,} distinct characters (after shared prefixes) are too many to exclude "
            f"(at most {MAX_EXCLUDED_NODES:,})"
        )
    return f'"\\"" {_except(trie, char_rule)} "\\""'


def _except(node: _Trie, char_rule: str) -> str:
    """The rest of a string, from this trie node to the closing quote, not ending on a listed one."""
    chars = "".join(char for char in node if char)
    alternatives = [f"{literal(json_char(char))} {_except(node[char], char_rule)}" for char in sorted(chars)]
    alternatives.append(f"({json_chars(ANY_CHAR - CharSet.chars(chars))}) {char_rule}*")
    body = " | ".join(alternatives)
    return f"({body})" if "" in node else f"({body})?"
