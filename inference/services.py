"""Use cases that change state: start a chat completion (loading its model if needed)."""

from __future__ import annotations

from inference.jobs import ChatCompletion, ChatJob, PromptAccepted
from inference.manager import model_manager


async def chat_completion_create(*, model: str | None, job: ChatJob) -> ChatCompletion:
    """Resolve and (lazily) load the model, queue the job and wait until its prompt is accepted.

    Errors found before any output (unknown model, failed load, prompt too long) are raised here,
    so they become HTTP errors rather than stream events.
    """
    manager = model_manager()
    model_file = manager.resolve(model)
    worker = await manager.acquire(model_file)
    events = worker.submit(job).events()
    try:
        accepted = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    assert isinstance(accepted, PromptAccepted)
    return ChatCompletion(model=model_file.name, prompt_tokens=accepted.prompt_tokens, events=events)
