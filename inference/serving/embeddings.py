"""Embeddings, on the model's embedding context."""

from __future__ import annotations

from inference.protocol import EmbeddingRequest
from inference.runtime.jobs import Generation
from inference.serving.generate import Caller, generation_start


async def embedding_create(*, request: EmbeddingRequest, caller: Caller) -> Generation:
    """Start embedding the inputs."""
    return await generation_start(
        model=request.model, jobs=[request.job], caller=caller, id_prefix="embd-", end_user=request.user
    )
