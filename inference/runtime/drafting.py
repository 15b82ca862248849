"""Prompt-lookup drafting: guesses at a generating choice's next tokens, taken from its own prompt
and output, for the scheduler to verify in its next decode (speculative decoding without a draft
model).

A choice that copies (an edited function, a quoted list, keys of JSON it has seen) often goes on
the way its last few tokens went on before. `NgramDrafter` finds the most recent earlier place
where its last NGRAM tokens occurred and proposes the tokens that followed there.

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
what was accepted otherwise, and a rest from drafting after a draft that was wholly rejected,
twice as long after each such draft in a row; beside other generating sequences, where drafts
cost more, no draft until its last 8 tokens occurred before or its drafts came true. A choice whose drafts rarely come
true (plain chat, mostly) thus drafts seldom and short; a choice that copies drafts long. Owned by one
choice; used by the scheduler's thread only.
"""

from __future__ import annotations

import itertools

# Tokens matched. Replayed on recorded SmolLM2 outputs (chat and copying, greedy and sampled),
# 3 proposed fewer wrong drafts than 2 (or 2 after 3, or 4 after 3 after 2) for the same gain.
NGRAM = 3
# Draft lengths. On the 2-core CPU measured, a draft token costs about 0.3 of a one-token decode
# alone and 0.65 of a generated token's share of a 4-sequence step, so drafts start short and
# grow only while they come true.
FIRST_DRAFT = 2
LONGEST_DRAFT = 8
# Beside other generating sequences, drafts that plain chat's short coincidences bring cost more
# than they repay (4 clients of plain chat ran 9% slower with one-token probes than without
# drafting, though 46% came true): there a choice starts drafting only where its last LONG_MATCH
# tokens all occurred before, as when it copies; once drafts come true it goes on.
LONG_MATCH = 8
# Steps without drafting after a wholly rejected draft; doubled for each such draft in a row.
FIRST_REST = 8
LONGEST_REST = 256


class NgramDrafter:
    """One choice's n-gram index of its sequence and the state of its adaptive drafting."""

    def __init__(self) -> None:
        # n-gram -> position of the token that followed its most recent occurrence
        self._followers: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # positions whose preceding n-gram is in _followers
        self._length = FIRST_DRAFT
        self._rest = 0  # steps still to go without drafting
        self._misses = 0  # wholly rejected drafts in a row

    def propose(self, tokens: list[int], next_token: int, most: int, *, beside_others: bool = False) -> list[int]:
        """Up to `most` tokens guessed to follow `tokens` (the sequence in the KV cache, which
        only ever grows between calls) and then `next_token`; none while resting, nor beside
        other generating sequences unless it copies or its drafts have been coming true."""
        self._index(tokens)
        if self._rest:
            self._rest -= 1
            return []
        length = min(self._length, most)
        start = self._followers.get((*tokens[len(tokens) - NGRAM + 1 :], next_token))
        if length <= 0 or start is None:
            return []
        if beside_others and self._length <= FIRST_DRAFT and not _copying(tokens, next_token, start):
            return []
        draft = list(itertools.takewhile(_is_token, tokens[start : start + length]))
        if start + len(draft) == len(tokens) and len(draft) < length:
            draft.append(next_token)  # the match ran into the end of the sequence, where next_token follows
        return draft

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
        self._indexed = len(tokens)


def _is_token(value: int) -> bool:
    """Whether a sequence's value is a token: an image's positions hold negative placeholders,
    which no draft may propose."""
    return value >= 0


def _copying(tokens: list[int], next_token: int, start: int) -> bool:
    """Whether the LONG_MATCH tokens up to `next_token` occurred before, just before `start`."""
    return start >= LONG_MATCH and tokens[start - LONG_MATCH : start] == [
        *tokens[len(tokens) - LONG_MATCH + 1 :],
        next_token,
    ]
