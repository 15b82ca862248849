"""Tokenize and detokenize on a model (llama.cpp server's /tokenize, /detokenize): started like any
request (the model loaded on demand, queued on its worker), answered by the worker as it prepares
the job, without a slot."""

from __future__ import annotations

from typing import Any

from inference.protocol.tokens import TokensRequest
from inference.runtime.jobs import Detokenized, Generation, Tokenized, TokenizeJob
from inference.serving.generate import Caller, generation_start


async def tokens_convert(*, request: TokensRequest, caller: Caller) -> Generation:
    """Start tokenizing (or detokenizing) on the request's model."""
    return await generation_start(model=request.model, jobs=[request.job], caller=caller, id_prefix="tok-")


async def tokens_body(generation: Generation, request: TokensRequest) -> dict[str, Any]:
    """`{"tokens": [id, …]}` (with pieces: `[{"id", "piece"}, …]`) or `{"content": text}`."""
    body: dict[str, Any] = {}
    async for event in generation.events:
        if isinstance(event, Tokenized):
            if isinstance(request.job, TokenizeJob) and request.job.with_pieces:
                body["tokens"] = [
                    {"id": token, "piece": piece if isinstance(piece, str) else list(piece)}
                    for token, piece in zip(event.tokens, event.pieces, strict=True)
                ]
            else:
                body["tokens"] = list(event.tokens)
        elif isinstance(event, Detokenized):
            body["content"] = event.text
    return body
