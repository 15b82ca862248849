"""A choice's sampler chain over llama.cpp: grammar, logit bias, penalties, then llama.cpp
server's order (top-k, top-p, min-p, temperature, a seeded draw); forced tokens accepted.

The model's worker thread only, like the rest of this package.
"""

from __future__ import annotations

import ctypes
import math
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from inference.runtime.errors import GrammarNotCompiled
from inference.runtime.jobs import GenerationJob, Sampling

if TYPE_CHECKING:
    from inference.runtime.llama import LlamaModel

# Penalties look back this far (llama-cpp-python's default).
PENALTY_LAST_N = 64


class LlamaSampler:
    """One choice's sampler chain: grammar, logit bias, then llama.cpp server's order."""

    def __init__(self, model: LlamaModel, ctx: Any, job: GenerationJob, seed_offset: int) -> None:
        self._ctx = ctx
        self._n_vocab = model.n_vocab
        self._argmax = greedy_alone(job)
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._grammar = None
        parts = []
        if job.grammar:
            self._grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, job.grammar.encode(), b"root")
            if not self._grammar:
                self.close()
                raise GrammarNotCompiled()
            parts.append(self._grammar)
        if job.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(job.logit_bias))(
                *(llama_cpp.llama_logit_bias(token, bias) for token, bias in job.logit_bias)
            )
            parts.append(llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(job.logit_bias), biases))
        parts += _sampling_parts(model.n_vocab, job, seed_offset)
        for part in parts:
            llama_cpp.llama_sampler_chain_add(self._chain, part)

    def sample(self, index: int) -> int:
        if self._argmax:  # greedy keeps no state: there is nothing for the chain to accept
            return int(logits_at(self._ctx, index, self._n_vocab).argmax())
        return llama_cpp.llama_sampler_sample(self._chain, self._ctx, index)  # accepts the token too

    def accept(self, token: int) -> None:
        """Take a forced token as sampled. A token the grammar does not allow passes it by: llama.cpp
        aborts the process on a grammar that accepts a token it cannot match."""
        if self._grammar is None or self._grammar_allows(token):
            llama_cpp.llama_sampler_accept(self._chain, token)
            return
        for index in range(1, llama_cpp.llama_sampler_chain_n(self._chain)):  # the grammar is first
            llama_cpp.llama_sampler_accept(llama_cpp.llama_sampler_chain_get(self._chain, index), token)

    def _grammar_allows(self, token: int) -> bool:
        candidate = llama_cpp.llama_token_data(token, 0.0, 0.0)
        candidates = llama_cpp.llama_token_data_array(ctypes.pointer(candidate), 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        return math.isfinite(candidate.logit)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self._chain)


def logits_at(ctx: Any, index: int, n_vocab: int) -> np.ndarray:
    """The logits of the last decode's `index`th batch token: a view of llama.cpp's buffer, valid
    until the next decode."""
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))


def greedy_alone(job: GenerationJob) -> bool:
    """Whether the chain would be llama.cpp's greedy sampler alone. Its first max logit is numpy's
    argmax, found in a tenth of the time (8 against 77 µs a token over SmolLM2's 49,152): the chain
    first copies the whole vocabulary into its candidates."""
    sampling = job.sampling
    assert sampling.temperature is not None, "Sampling.with_defaults fills it in before a job is queued"
    return not job.grammar and not job.logit_bias and sampling.temperature <= 0 and not _penalised(sampling)


def _penalised(sampling: Sampling) -> bool:
    return (sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty) != (1.0, 0.0, 0.0)


def _sampling_parts(n_vocab: int, job: GenerationJob, seed_offset: int) -> list[Any]:
    sampling = job.sampling
    temperature = sampling.temperature
    assert temperature is not None, "Sampling.with_defaults fills it in before a job is queued"
    parts = []
    if _penalised(sampling):
        parts.append(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty
            )
        )
    if temperature <= 0:
        return [*parts, llama_cpp.llama_sampler_init_greedy()]
    top_k = sampling.top_k
    assert top_k is not None, "Sampling.with_defaults fills it in before a job is queued"
    if top_k > 0:
        parts.append(llama_cpp.llama_sampler_init_top_k(top_k))
    parts.append(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    parts.append(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
    parts.append(llama_cpp.llama_sampler_init_temp(temperature))
    # LLAMA_DEFAULT_SEED (0xFFFFFFFF) means "random": a given seed never maps to it.
    # Each choice of a seeded request has its own seed: n samples, all repeatable.
    seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else (sampling.seed + seed_offset) % 0xFFFFFFFF
    return [*parts, llama_cpp.llama_sampler_init_dist(seed)]
