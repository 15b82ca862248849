"""Embeddings, on the model's embedding context; the vectors in OpenAI's shape."""

from __future__ import annotations

import base64
import struct
from typing import Any

from inference.protocol import EmbeddingRequest
from inference.runtime.jobs import Embedded, Generation
from inference.serving.generate import Caller, generation_start


async def embedding_create(*, request: EmbeddingRequest, caller: Caller) -> Generation:
    """Start embedding the inputs."""
    return await generation_start(
        model=request.model, jobs=[request.job], caller=caller, id_prefix="embd-", end_user=request.user
    )


async def embedded_vectors(generation: Generation) -> tuple[tuple[float, ...], ...]:
    """The vectors of an embedding generation (one per input, unit length), its events read to the end."""
    vectors: tuple[tuple[float, ...], ...] = ()
    async for event in generation.events:
        if isinstance(event, Embedded):
            vectors = event.vectors
    return vectors


async def embedding_body(generation: Generation, request: EmbeddingRequest) -> dict[str, Any]:
    vectors = await embedded_vectors(generation)

    def encoded(vector: tuple[float, ...]) -> list[float] | str:
        if request.encoding_format == "base64":  # little-endian float32, as OpenAI sends them
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return list(vector)

    return {
        "object": "list",
        "model": generation.model,
        "data": [
            {"object": "embedding", "index": index, "embedding": encoded(vector)}
            for index, vector in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": generation.prompt_tokens, "total_tokens": generation.prompt_tokens},
    }
