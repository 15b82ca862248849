"""JSON Schema's `pattern` (an ECMA-262 regular expression) as GBNF over the characters of a
JSON string, written the canonical way (`inference.grammar.gbnf`).

A pattern matches anywhere in the string unless anchored: `^` at the start and `$` at the end
of a top-level alternative anchor it (`$` at the very end, as in ECMA-262; Python's also before
a final newline); anchors anywhere else are refused. Supported: literal
characters and escapes, `.`, classes (ranges, negation), `\\d \\w \\s` and their negations,
groups (capturing, `(?:`, named), alternation, and the quantifiers `* + ? {n} {n,} {n,m}`, lazy
or not (the language is the same). Refused with PatternNotSupported: lookarounds,
backreferences, word boundaries, `\\p{}`, `\\c`, a `{` that is no quantifier, and whatever means
one thing in ECMA-262 and another in Python's `re` (which validators such as jsonschema use):
so `\\d \\w \\s`, their negations and any class using them match ASCII characters only, `.`
and negated classes match characters of the Basic Multilingual Plane only, characters beyond
it are refused, and so is a class that begins with `]`.

Like llama.cpp's json-schema-to-grammar (`_visit_pattern`; MIT licence, (c) the ggml authors),
repeated sub-expressions become rules of their own, which keeps llama.cpp's repetition limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from inference.grammar.gbnf import CharSet, json_char, json_chars, literal, repeat

_BMP = CharSet.of((0, 0xD7FF), (0xE000, 0xFFFF))
_LINE_TERMINATORS = CharSet.chars("\n\r\u2028\u2029")
# ASCII, less \x1c-\x1f (Python's \s matches them, ECMA-262's does not).
_AGREED = CharSet.of((0, 0x1B), (0x20, 0x7F))
_DIGITS = CharSet.of((0x30, 0x39))
_WORD = _DIGITS | CharSet.of((0x41, 0x5A), (0x61, 0x7A)) | CharSet.chars("_")
_SPACE = CharSet.chars("\t\n\x0b\x0c\r ")
_SHORTHANDS = {
    "d": _DIGITS,
    "D": _AGREED - _DIGITS,
    "w": _WORD,
    "W": _AGREED - _WORD,
    "s": _SPACE,
    "S": _AGREED - _SPACE,
}
_CONTROL_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\x0c", "v": "\x0b"}
_SYNTAX = set("^$\\.*+?()[]{}|")


class PatternNotSupported(ValueError):
    """The pattern uses something this translation does not express; the message says what."""


@dataclass(frozen=True)
class _Piece:
    """A translated part of a pattern; `char` when it is one literal character."""

    expr: str
    nullable: bool
    char: str | None = None


def pattern_gbnf(pattern: str, *, char_rule: str, define: Callable[[str], str]) -> str:
    """GBNF for the contents (between the quotes) of JSON strings that `pattern` matches.

    `char_rule` names a rule for any one character; `define(body)` adds a rule and returns its
    name. Raises PatternNotSupported.
    """
    if any(ord(char) > 0xFFFF for char in pattern):
        raise PatternNotSupported("characters beyond the Basic Multilingual Plane are not supported")
    return _Parser(pattern, char_rule, define).translate()


class _Parser:
    """A recursive-descent reading of one pattern, writing GBNF as it goes."""

    def __init__(self, pattern: str, char_rule: str, define: Callable[[str], str]) -> None:
        self.text, self.pos = pattern, 0
        self.char_rule, self.define = char_rule, define

    def translate(self) -> str:
        alternatives = []
        while True:
            anchored_start = self._eat("^")
            sequence = self._sequence(top=True).expr
            anchored_end = self._eat("$")
            free = f"{self.char_rule}*"  # what an unanchored end lets come before or after
            parts = ("" if anchored_start else free, sequence, "" if anchored_end else free)
            alternatives.append(" ".join(part for part in parts if part))
            if not self._eat("|"):
                break
        if self.pos < len(self.text):
            raise self._error("unbalanced ')'")
        return _alternation([_Piece(expr, not expr) for expr in alternatives]).expr

    def _peek(self, count: int = 1) -> str:
        return self.text[self.pos : self.pos + count]

    def _eat(self, expected: str) -> bool:
        if self.text.startswith(expected, self.pos):
            self.pos += len(expected)
            return True
        return False

    def _next(self) -> str:
        if self.pos >= len(self.text):
            raise self._error("it ends too early")
        self.pos += 1
        return self.text[self.pos - 1]

    def _error(self, problem: str) -> PatternNotSupported:
        return PatternNotSupported(f"{problem} (at offset {self.pos} of /{self.text}/)")

    def _alternatives(self) -> _Piece:
        pieces = [self._sequence(top=False)]
        while self._eat("|"):
            pieces.append(self._sequence(top=False))
        return _alternation(pieces)

    def _sequence(self, *, top: bool) -> _Piece:
        pieces: list[_Piece] = []
        while self.pos < len(self.text) and self._peek() not in "|)":
            if self._peek() == "$" and top and self._peek(2)[1:] in ("", "|"):
                break
            if self._peek() in "^$":
                raise self._error("anchors are supported only at the start or end of the whole pattern")
            pieces.append(self._quantified(self._atom()))
        return _sequence(pieces)

    def _atom(self) -> _Piece:
        char = self._next()
        if char == ".":
            return self._chars(_BMP - _LINE_TERMINATORS)
        if char == "(":
            return self._group()
        if char == "[":
            return self._chars(self._class())
        if char == "\\":
            escaped = self._escape(in_class=False)
            return _char_piece(escaped) if isinstance(escaped, str) else self._chars(escaped)
        if char in "*+?{":
            raise self._error(f"'{char}' has nothing to repeat")
        return _char_piece(char)

    def _group(self) -> _Piece:
        if self._eat("?"):
            if self._eat(":"):
                pass
            elif self._eat("<") and self._peek() not in "=!":
                while self._next() != ">":
                    pass
            else:
                raise self._error("lookarounds and (?...) groups other than (?: and (?<name> are not supported")
        piece = self._alternatives()
        if not self._eat(")"):
            raise self._error("unbalanced '('")
        return _Piece(f"({piece.expr})" if piece.expr else "", piece.nullable)

    def _chars(self, chars: CharSet) -> _Piece:
        alternatives = json_chars(chars)
        if alternatives is None:
            raise self._error("a class that matches no character")
        return _Piece(f"({alternatives})" if " " in alternatives else alternatives, False)

    def _class(self) -> CharSet:
        negated = self._eat("^")
        if self._peek() == "]":
            raise self._error("a class beginning with ']' means different things in ECMA-262 and Python")
        chars, shorthand = CharSet(), False
        while not self._eat("]"):
            low = self._class_atom()
            if isinstance(low, CharSet):
                if self._peek() == "-" and self._peek(2) != "-]":
                    raise self._error("a range from a class escape")
                chars, shorthand = chars | low, True
            elif self._peek() == "-" and self._peek(2) not in ("-]", "-"):
                self.pos += 1
                high = self._class_atom()
                if not isinstance(high, str) or high < low:
                    raise self._error("a bad range in a class")
                chars |= CharSet.of((ord(low), ord(high)))
            else:
                chars |= CharSet.chars(low)
        if negated:
            chars = _BMP - chars
        return chars & _AGREED if shorthand else chars

    def _class_atom(self) -> str | CharSet:
        char = self._next()
        return self._escape(in_class=True) if char == "\\" else char

    def _escape(self, *, in_class: bool) -> str | CharSet:
        """The character (or shorthand set) of the escape after a backslash."""
        char = self._next()
        if char in _SHORTHANDS:
            return _SHORTHANDS[char]
        if char in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[char]
        if char == "b" and in_class:
            return "\b"
        if char == "0" and not self._peek().isdigit():
            return "\0"
        if char in "xu":
            digits = self.text[self.pos : self.pos + (2 if char == "x" else 4)]
            if len(digits) != (2 if char == "x" else 4) or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self._error(f"'\\{char}' needs hexadecimal digits")
            self.pos += len(digits)
            code = int(digits, 16)
            if 0xD800 <= code <= 0xDFFF:
                raise self._error("escaped surrogates are not supported")
            return chr(code)
        if char.isascii() and char.isalnum():
            raise self._error(f"'\\{char}' (backreferences, word boundaries, \\c, \\k, \\p) is not supported")
        return char

    def _quantified(self, piece: _Piece) -> _Piece:
        bounds = self._quantifier()
        if bounds is None:
            return piece
        self._eat("?")  # lazy: the same strings match
        if (self._peek() and self._peek() in "*+?") or (self._peek() == "{" and self._quantifier_ahead()):
            raise self._error("a quantifier has nothing to repeat")
        low, high = bounds
        if high is None and piece.nullable:
            raise self._error("an unbounded repetition of something that can be empty")
        if high is not None and low > high:
            raise self._error("a quantifier {n,m} with n > m")
        if not piece.expr:  # an empty group, repeated, is still empty
            return piece
        item = piece.expr if piece.char is not None else self.define(piece.expr)
        return _Piece(repeat(item, low, high), piece.nullable or low == 0)

    def _quantifier(self) -> tuple[int, int | None] | None:
        simple = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(self._peek())
        if simple is not None:
            self.pos += 1
            return simple
        if self._peek() != "{":
            return None
        if not self._quantifier_ahead():
            raise self._error("a '{' that is no quantifier")
        end = self.text.index("}", self.pos)
        low, comma, high = self.text[self.pos + 1 : end].partition(",")
        self.pos = end + 1
        if not comma:
            return int(low), int(low)
        return int(low), int(high) if high else None

    def _quantifier_ahead(self) -> bool:
        """Whether a `{n}`, `{n,}` or `{n,m}` begins here."""
        end = self.text.find("}", self.pos)
        low, _, high = self.text[self.pos + 1 : end].partition(",") if end > self.pos else ("", "", "")
        return low.isdigit() and (not high or high.isdigit())


def _char_piece(char: str) -> _Piece:
    return _Piece(literal(json_char(char)), False, char)


def _sequence(pieces: list[_Piece]) -> _Piece:
    """Pieces one after the other, runs of literal characters as one literal."""
    parts: list[str] = []
    run = ""
    for piece in pieces:
        if piece.char is not None:
            run += json_char(piece.char)
            continue
        if run:
            parts.append(literal(run))
            run = ""
        if piece.expr:
            parts.append(piece.expr)
    if run:
        parts.append(literal(run))
    return _Piece(" ".join(parts), all(piece.nullable for piece in pieces))


def _alternation(pieces: list[_Piece]) -> _Piece:
    if len(pieces) == 1:
        return pieces[0]
    if not any(piece.expr for piece in pieces):
        return _Piece("", True)
    return _Piece(f"({' | '.join(piece.expr for piece in pieces)})", any(piece.nullable for piece in pieces))
