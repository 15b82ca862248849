"""Reranking: a request's documents scored for its query by its model, as its `reranker` setting
says (runtime.scoring): a reranker GGUF (rank pooling) by its classifier head, with its own
rerank template if it has one; any other model by the probability that it answers "yes" when
asked in its chat template whether the document meets the query (thinking turned off, as the
template allows). The scores go out best first, in llama.cpp server's shape."""

from __future__ import annotations

import asyncio
from typing import Any

from inference.protocol.rerank import RerankRequest, rerank_body
from inference.runtime.catalog import ModelFile
from inference.runtime.errors import TemplateRejected
from inference.runtime.gguf_header import GGUFError, read_gguf_info
from inference.runtime.jobs import DOCUMENT_MARKER, QUERY_MARKER, Generation, Ranked, RerankJob, RerankMode
from inference.runtime.pool import model_pool
from inference.serving.generate import Caller, generation_start
from inference.serving.prompts import ModelFormat, model_format
from inference.templates import TemplateFailed

# What a generating model is asked of each document: Qwen3-Reranker's instruction (its models
# were trained on it), query first, so that every document's prompt shares the query's tokens.
YES_NO_QUESTION = (
    'Judge whether the Document meets the requirements based on the Query. Note that the answer can only be "yes" '
    f'or "no".\n<Query>: {QUERY_MARKER}\n<Document>: {DOCUMENT_MARKER}'
)
# How a model without a chat template (a base model) is asked.
PLAIN_PROMPT = f"{YES_NO_QUESTION}\nAnswer:"


async def rerank_create(*, request: RerankRequest, caller: Caller) -> Generation:
    """Start scoring the documents on the request's model (its header and settings, and its chat
    template for yes_no, read off the event loop)."""
    model_file = model_pool().catalog.resolve(request.model, allowed=caller.allowed_models)
    mode, template = await asyncio.to_thread(_reranking, model_file)
    if mode is RerankMode.YES_NO:
        form = await model_format(request.model, caller.allowed_models)
        template = await asyncio.to_thread(yes_no_prompt, form)
    job = RerankJob(
        query=request.query, documents=request.documents, mode=mode, template=template, keep_alive=request.keep_alive
    )
    return await generation_start(model=request.model, jobs=[job], caller=caller, id_prefix="rerank-")


def _reranking(model_file: ModelFile) -> tuple[RerankMode, str | None]:
    """How the model reranks, and a reranker's own template (its markers in place)."""
    pool = model_pool()
    setting = pool.config.settings_for(model_file.name, pool.settings_overrides(model_file.name)).reranker
    try:
        info = read_gguf_info(model_file.path)
    except GGUFError:  # its load fails and says why
        return RerankMode.chosen(setting, False), None
    mode = RerankMode.chosen(setting, info.reranker)
    if mode is RerankMode.YES_NO or info.rerank_template is None:
        return mode, None
    return mode, info.rerank_template.replace("{query}", QUERY_MARKER).replace("{document}", DOCUMENT_MARKER)


def yes_no_prompt(form: ModelFormat) -> str:
    """The yes_no question in the model's chat template (the generation prompt, and the end of
    thinking where the template opens it, included); raises TemplateRejected if it fails."""
    if form.template is None:
        return PLAIN_PROMPT
    markup = form.template.markup
    kwargs = {**form.settings.chat_template_kwargs, **((markup.thinking and markup.thinking.disable) or {})}
    try:
        prompt = form.template.render([{"role": "user", "content": YES_NO_QUESTION}], kwargs=kwargs)
    except TemplateFailed as failed:
        raise TemplateRejected(model=form.model, detail=str(failed)) from None
    if markup.thinking is not None and markup.thinking_open(prompt):
        prompt += markup.thinking.end
    if prompt.count(QUERY_MARKER) != 1 or prompt.count(DOCUMENT_MARKER) != 1:
        return PLAIN_PROMPT  # a template that rewrites what it is given
    return prompt


async def reranked_body(generation: Generation, request: RerankRequest) -> dict[str, Any]:
    scores: tuple[float, ...] = ()
    async for event in generation.events:
        if isinstance(event, Ranked):
            scores = event.scores
    return rerank_body(generation.model, request, scores, generation.prompt_tokens)
