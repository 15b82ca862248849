"""Prompt-lookup drafting: guesses at a generating choice's next tokens, taken from its own prompt
and output or from the model's recent answers, for the scheduler to verify in its next decode
(speculative decoding without a draft model).

A choice that copies (an edited function, a quoted list, keys of JSON it has seen) often goes on
the way its last few tokens went on before. `NgramDrafter` finds the most recent earlier place
where its last NGRAM tokens (or, matching more, its last LONG_MATCH tokens) occurred and proposes
the tokens that followed there, no more than the match's length; a copy that runs into the end of
a long match repeats itself, as in a loop (a list's pattern, a model repeating a line). An answer
given before (a regenerated reply, a retried tool call, the same JSON keys for another document)
is drafted from `AnswerMemory`, the recent answers of the same model, where its last MEMORY_MATCH
tokens occurred there; of the two places, the one that matches more tokens back is copied.

Verification is "sample and compare" (as llama.cpp's `common_sampler_sample_and_accept_n`): the
choice's next token and its draft d1…dk are decoded together, each with logits; the choice's own
sampler draws t1 from the next token's logits, and while t(i) == d(i) it draws t(i+1) from d(i)'s
logits. The first t(i) that differs, or t(k+1), is kept as the choice's next token; the cells of
the draft tokens after it are forgotten. Every output token is thus one draw of the choice's own
sampler chain from the model's distribution given the tokens before it, in the same order as
without drafting: the output distribution is unchanged at any temperature, a seeded request
gives the same draws, and the sampler (grammar, penalties) sees only accepted tokens. For a
draft that is a single guess (a point mass), this is the standard acceptance rule: d is accepted
with probability p(d), and on rejection the token is drawn from p without d, renormalised.

Adaptive, per choice: a draft length that doubles while whole drafts are accepted and shrinks to
what was accepted otherwise (but is half the match, where that is long), and a rest from drafting
after a draft that was wholly rejected, twice as long after each such draft in a row; no draft
until its last 8 tokens occurred before or its drafts came true, and shorter drafts beside other
generating sequences, where they cost more. A choice whose drafts rarely come true (plain chat,
mostly) thus drafts seldom and short; a choice that copies drafts long. A drafter is owned by one
choice, the memory by one model's scheduler; both are used by the scheduler's thread only.
"""

from __future__ import annotations

import itertools
from collections import deque

# Tokens matched. Replayed on recorded SmolLM2 outputs (chat and copying, greedy and sampled),
# 3 proposed fewer wrong drafts than 2 (or 2 after 3, or 4 after 3 after 2) for the same gain.
NGRAM = 3
# Draft lengths. On the 2-core CPU measured (2 threads), a draft token costs 0.5-0.8 of a
# one-token decode alone (a one-token decode reads the weights once, bound by memory; a longer
# batch computes) and 0.65 of a generated token's share of a 4-sequence step, so drafts start
# short and grow only while they come true. Alone (with 1 thread), code edits that recall an
# earlier answer ran at 152 tokens/s with drafts of up to 32 against 138 with 8 (and 131 with 64:
# a rejected draft wastes more); beside others, 4 clients recalling answers ran at 211 against
# 156 with 32.
FIRST_DRAFT = 2
LONGEST_DRAFT = 32
LONGEST_DRAFT_BESIDE_OTHERS = 8
# A choice starts drafting only where its last LONG_MATCH tokens all occurred before, as when it
# copies; once drafts come true it goes on. Plain chat's short coincidences come true a fifth of
# the time, less than a draft costs: alone, plain chat ran at 119 tokens/s drafting on 3-token
# matches against 123 on 8-token ones (124 without drafting), code edits at 97 against 110.
LONG_MATCH = 8
# Steps without drafting after a wholly rejected draft; doubled for each such draft in a row.
FIRST_REST = 8
LONGEST_REST = 256
# Tokens matched in an earlier answer. Every answer after the same chat template begins alike, so
# short matches across requests are coincidences more often than within one sequence.
MEMORY_MATCH = LONG_MATCH
# Tokens of recent answers a model keeps (about 250 bytes each with the index, 4 MB in all): a few
# dozen answers. Remembering a 500-token answer takes about 3 ms of the model thread, past the
# capacity (when an older one goes).
MEMORY_TOKENS = 16384
# How far back two places' matches are compared.
MATCH_CAP = 32
# A match this long drafts at least half its length at once. Drafts no longer than their match,
# this, the LONG_MATCH index beside the NGRAM one and loops repeated past the sequence's end,
# replayed with the measured cost of each batch size: on recorded code edits, 1.50 tokens per
# one-token decode's time against 1.41 without them (1.47 against 1.32 on the answers they gave
# in the server); on plain chat (16 prompts, greedy and sampled), 1.06 against 1.04.
SURE_MATCH = 16


class AnswerMemory:
    """The recent answers of one model's choices, each with the MEMORY_MATCH - 1 prompt tokens
    before it, indexed by MEMORY_MATCH-grams; the oldest go first past MEMORY_TOKENS."""

    def __init__(self, capacity: int = MEMORY_TOKENS) -> None:
        self._capacity = capacity
        self._answers: deque[list[int]] = deque()
        self._held = 0
        # n-gram -> (answer, position of the token that followed its most recent occurrence)
        self._followers: dict[tuple[int, ...], tuple[list[int], int]] = {}

    def remember(self, sequence: list[int], answer_start: int, answer_end: int | None = None) -> None:
        """Keep the answer that runs from `answer_start` of a finished choice's `sequence` to
        `answer_end` (its end where None), copying only that much of it."""
        start = max(0, answer_start - MEMORY_MATCH + 1)
        end = len(sequence) if answer_end is None else answer_end
        answer = sequence[start : min(end, start + self._capacity)]
        if len(answer) <= MEMORY_MATCH:
            return  # nothing follows a whole match
        while self._held + len(answer) > self._capacity:
            self._forget_oldest()
        self._answers.append(answer)
        self._held += len(answer)
        for position in range(MEMORY_MATCH, len(answer)):
            self._followers[tuple(answer[position - MEMORY_MATCH : position])] = (answer, position)

    def recall(self, ngram: tuple[int, ...]) -> tuple[list[int], int] | None:
        """The answer where `ngram` (MEMORY_MATCH tokens) last occurred, and where it ended there."""
        return self._followers.get(ngram)

    def _forget_oldest(self) -> None:
        answer = self._answers.popleft()
        self._held -= len(answer)
        for position in range(MEMORY_MATCH, len(answer)):
            ngram = tuple(answer[position - MEMORY_MATCH : position])
            if self._followers.get(ngram, (None, 0))[0] is answer:
                del self._followers[ngram]


class NgramDrafter:
    """One choice's n-gram index of its sequence and the state of its adaptive drafting."""

    def __init__(self) -> None:
        # NGRAM-gram and LONG_MATCH-gram -> position of the token that followed its most recent occurrence
        self._followers: dict[tuple[int, ...], int] = {}
        self._long_followers: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # positions whose preceding n-grams are indexed
        self._length = FIRST_DRAFT
        self._rest = 0  # steps still to go without drafting
        self._misses = 0  # wholly rejected drafts in a row

    def propose(
        self,
        tokens: list[int],
        next_token: int,
        most: int,
        *,
        beside_others: bool = False,
        memory: AnswerMemory | None = None,
    ) -> list[int]:
        """Up to `most` tokens guessed to follow `tokens` (the sequence in the KV cache, which
        only ever grows between calls) and then `next_token`, from the sequence itself or from
        `memory`; none while resting, nor unless it copies or its drafts have been coming true;
        shorter beside other generating sequences."""
        self._index(tokens)
        if self._rest:
            self._rest -= 1
            return []
        longest = min(most, LONGEST_DRAFT_BESIDE_OTHERS if beside_others else LONGEST_DRAFT)
        if longest <= 0:
            return []
        recent = [*tokens[max(0, len(tokens) - MATCH_CAP + 1) :], next_token]
        start, matched = self._own_match(tokens, recent)
        recalled = memory.recall(tuple(recent[-MEMORY_MATCH:])) if memory is not None else None
        if recalled is not None and (remembered := _matched(*recalled, recent)) >= matched:
            answer, at = recalled
            return list(itertools.takewhile(_is_token, answer[at : at + self._length_for(remembered, longest)]))
        if start is None or (self._length <= FIRST_DRAFT and matched < LONG_MATCH):
            return []
        return _copied(tokens, next_token, start, self._length_for(matched, longest), matched >= LONG_MATCH)

    def _length_for(self, matched: int, longest: int) -> int:
        """The adaptive length, or half the match where it is SURE_MATCH tokens or more (a loop or
        a copy under way, as after a draft cut short by an edit), but no longer than the match."""
        length = max(self._length, matched // 2) if matched >= SURE_MATCH else self._length
        return min(length, matched, longest)

    def _own_match(self, tokens: list[int], recent: list[int]) -> tuple[int | None, int]:
        """Where the sequence went on after the most recent earlier occurrence of its last NGRAM
        tokens, or of its last LONG_MATCH ones where those match more tokens back (in a loop of
        20 tokens, a 3-token pattern may recur within it), and how many tokens back it matches."""
        best, matched = None, 0
        for followers, n in ((self._followers, NGRAM), (self._long_followers, LONG_MATCH)):
            start = followers.get(tuple(recent[-n:]))
            if start is not None and (length := _matched(tokens, start, recent)) > matched:
                best, matched = start, length
        return best, matched

    def verified(self, proposed: int, accepted: int) -> None:
        """Adapt to how the last draft fared: `accepted` of its `proposed` tokens came true."""
        if accepted == proposed:
            self._length = min(2 * self._length, LONGEST_DRAFT)
        else:
            self._length = max(accepted, FIRST_DRAFT)
        if accepted:
            self._misses = 0
        else:
            self._misses += 1
            self._rest = min(FIRST_REST << (self._misses - 1), LONGEST_REST)

    def _index(self, tokens: list[int]) -> None:
        for position in range(max(self._indexed, NGRAM), len(tokens)):
            self._followers[tuple(tokens[position - NGRAM : position])] = position
            if position >= LONG_MATCH:
                self._long_followers[tuple(tokens[position - LONG_MATCH : position])] = position
        self._indexed = len(tokens)


def _is_token(value: int) -> bool:
    """Whether a sequence's value is a token: an image's positions hold negative placeholders,
    which no draft may propose."""
    return value >= 0


def _copied(tokens: list[int], next_token: int, start: int, length: int, repeats: bool) -> list[int]:
    """Up to `length` tokens of the sequence `tokens` + `next_token` from `start` on. A copy that
    reaches the end goes on with what it has just copied where `repeats` (a loop's period again,
    as LZ77 copies), and stops there otherwise."""
    draft: list[int] = []
    for position in range(start, start + length):
        if position < len(tokens):
            value = tokens[position]
        elif position == len(tokens):
            value = next_token
        elif repeats:
            value = draft[position - len(tokens) - 1]
        else:
            break
        if not _is_token(value):
            break
        draft.append(value)
    return draft


def _matched(source: list[int], start: int, recent: list[int]) -> int:
    """How many of the `recent` tokens (the last MATCH_CAP, up to the next token) occur in
    `source` just before `start`."""
    matched = 0
    while matched < min(start, len(recent)) and source[start - 1 - matched] == recent[-1 - matched]:
        matched += 1
    return matched
