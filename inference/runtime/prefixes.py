"""Prefixes shared between running requests: computed once, their KV cells copied.

A request admitted while another holds (or is processing) a longer prefix of its prompt than any
idle slot or the prompt cache gave it takes that prefix's cells from the other's slot (a copy in
llama.cpp's unified cache, as n choices share one prompt): at once if they are there, else once
the other's prompt gets that far. It waits only for a request admitted before it that is
processing that prefix now — ahead of it for every step's prompt budget, so never slower than
computing it itself —, only for FOLLOW_AT_LEAST tokens or more, and computes the prefix itself if
that request ends first. Pure Python; the scheduler's thread only.
"""

from __future__ import annotations

from inference.runtime.choices import Key, Request
from inference.runtime.prompt_cache import common_prefix
from inference.runtime.slots import SlotMemory

# A request waits for another's prefix only if it is at least this much longer than what it has
# already: a few tokens are quicker processed beside the other's than waited for.
FOLLOW_AT_LEAST = 16


def follow(
    request: Request[Key], running: list[Request[Key]], memory: SlotMemory, reuse: int, tier: str
) -> tuple[int, str]:
    """Give a request just admitted (holding `reuse` tokens of its prompt, from `tier`) the longest
    prefix of its prompt that a running request holds, or have it wait for one processing it; how
    many prompt tokens its slot then holds, and from where."""
    prompt = request.prepared.prompt
    best: tuple[Request[Key], int] | None = None
    for other in running:
        shared = request.prepared.unsplit(min(common_prefix(other.prepared.prompt, prompt), len(prompt) - 1))
        if shared > (best[1] if best else reuse):
            best = (other, shared)
    if best is None:
        return reuse, tier
    leader, shared = best
    if _taken(request, leader, shared, memory):
        return shared, "slot"
    if shared - reuse >= FOLLOW_AT_LEAST and leader.processing():
        request.leader, request.shared = leader, shared
    return reuse, tier


def take_prefixes(running: list[Request[Key]], memory: SlotMemory) -> None:
    """Give each waiting request its leader's prefix once the leader holds it; a request whose
    leader ended first processes the prefix itself."""
    for request in running:
        leader = request.leader
        if leader is not None and (_taken(request, leader, request.shared, memory) or not leader.unfinished()):
            request.leader = None


def _taken(request: Request[Key], leader: Request[Key], shared: int, memory: SlotMemory) -> bool:
    """Give the request the first `shared` tokens of its prompt from the leader's slot, if it holds
    them; whether it did."""
    prompt, first = request.prepared.prompt, request.choices[0]
    source = leader.holding(prompt[:shared])
    if source is None:
        return False
    memory.share(source, first.slot, shared)
    first.pending = prompt[shared:]
    return True
