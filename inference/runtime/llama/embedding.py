"""A model's embedding context: token lists into vectors, or, for a reranker (llama.cpp's rank
pooling: its classifier head on the pooled sequence), query-document pairs into scores.

A reranker's pairs are decoded several at a time, each a sequence of its own, as many as fit
the context (which is also the batch: a sequence is pooled whole) and RANK_SEQUENCES; a pair's
score is the first value its head gives (a BGE or Jina reranker's logit; a Qwen3 reranker's
probability of "yes"), as llama.cpp's server reports it.

Like the rest of this package, only the model's worker thread may use it.
"""

from __future__ import annotations

from dataclasses import replace

import llama_cpp
import numpy as np

from inference.runtime.decoding import BatchToken
from inference.runtime.llama import DecodeFailed, LlamaModel, _recent_llama_problems, fill_batch
from inference.runtime.settings import LoadSettings

# A reranker's pairs decoded in one batch, at most.
RANK_SEQUENCES = 32


class EmbeddingContext:
    """An embedding context of a model: one vector per token list, mean-pooled unless the model
    pools its own way, normalised to unit length; or, pooled by rank, one score per pair."""

    def __init__(self, model: LlamaModel, settings: LoadSettings) -> None:
        # Each input is one sequence, decoded whole: the batch is the context.
        whole = replace(settings, n_batch=settings.n_ctx, parallel=RANK_SEQUENCES)
        forced = {"pooling_type": llama_cpp.LLAMA_POOLING_TYPE_RANK} if settings.reranker == "rank" else {}
        self._ctx = model.context(whole, embeddings=True, **forced)
        if llama_cpp.llama_pooling_type(self._ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            llama_cpp.llama_free(self._ctx)  # a generative model: average its token vectors
            self._ctx = model.context(whole, embeddings=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        self.ranks = llama_cpp.llama_pooling_type(self._ctx) == llama_cpp.LLAMA_POOLING_TYPE_RANK
        # llama.cpp rounds the context up, not the batch: a decode holds no more than the batch.
        self.n_ctx = min(llama_cpp.llama_n_ctx(self._ctx), llama_cpp.llama_n_ubatch(self._ctx))
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_embd = llama_cpp.llama_model_n_embd(model.pointer)
        self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        encoder_only = llama_cpp.llama_model_has_encoder(model.pointer) and not llama_cpp.llama_model_has_decoder(
            model.pointer
        )
        self._encode = llama_cpp.llama_encode if encoder_only else llama_cpp.llama_decode

    def embed(self, tokens: list[int]) -> tuple[float, ...]:
        self._decode([tokens])
        pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
        vector = np.ctypeslib.as_array(pointer, shape=(self._n_embd,)).astype(np.float64)
        norm = np.linalg.norm(vector)
        return tuple((vector / norm if norm else vector).tolist())

    def scores(self, prompts: tuple[list[int], ...]) -> list[float]:
        """Each pair's score (a context pooled by rank), in order."""
        scores: list[float] = []
        group: list[list[int]] = []
        for prompt in prompts:
            if group and (len(group) == RANK_SEQUENCES or sum(map(len, group)) + len(prompt) > self.n_ctx):
                scores += self._scored(group)
                group = []
            group.append(prompt)
        return scores + self._scored(group)

    def _scored(self, group: list[list[int]]) -> list[float]:
        self._decode(group)
        return [float(llama_cpp.llama_get_embeddings_seq(self._ctx, seq_id)[0]) for seq_id in range(len(group))]

    def _decode(self, sequences: list[list[int]]) -> None:
        """Decode token lists as sequences 0, 1, … of an empty cache, every token's output kept."""
        llama_cpp.llama_memory_clear(self._memory, True)
        fill_batch(
            self._batch,
            (
                BatchToken(token, position, seq_id, True)
                for seq_id, tokens in enumerate(sequences)
                for position, token in enumerate(tokens)
            ),
        )
        if self._encode(self._ctx, self._batch) != 0:
            raise DecodeFailed(f"embedding failed; {_recent_llama_problems()}".rstrip("; "))

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
