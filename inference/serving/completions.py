"""Text completions: one job per prompt, started on the model."""

from __future__ import annotations

from inference.protocol import CompletionRequest
from inference.runtime.jobs import Generation
from inference.serving.generate import Caller, generation_start


async def completion_create(*, request: CompletionRequest, caller: Caller) -> Generation:
    """Start a text completion, one job per prompt (their choices numbered on)."""
    return await generation_start(
        model=request.model, jobs=list(request.jobs), caller=caller, id_prefix="cmpl-", stream=request.stream,
        end_user=request.user,
    )
