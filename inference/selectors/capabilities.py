"""Reads: what a model can do, as the models page, `manage.py models` and Ollama's `/api/show`
say it — from its GGUF header, its chat template's markup, its settings and its projector.

- `chat`: it has a chat template (its own, or `chat_template` / `chat_format` in config.json);
  `tools` with it (in the template's own markup, or the generic way);
- `thinking`: its template writes thinking markers (learned by rendering it);
- `vision`: a multimodal projector belongs to it;
- `embeddings`: its GGUF asks for a pooling of its own (an embedding model; any model can embed
  by averaging its token vectors, but only these are made for it);
- `rerank`: a reranker (rank pooling), or its `reranker` setting is `yes_no` (under `auto`,
  any chat model also answers /v1/rerank by the probability of "yes");
- `fill-in-the-middle`: its vocabulary has FIM prefix, suffix and middle tokens.

Reads a header (cached per file version) and may learn a template (cached per source): call
it off the event loop.
"""

from __future__ import annotations

from inference.config import ModelSettings
from inference.runtime.catalog import ModelFile
from inference.runtime.gguf_header import GGUFError, read_gguf_info
from inference.templates import TemplateFailed, compiled

CAPABILITIES = ("chat", "tools", "thinking", "vision", "embeddings", "rerank", "fill-in-the-middle")


def model_capabilities(model: ModelFile, settings: ModelSettings) -> list[str]:
    """The model's capabilities, in CAPABILITIES' order; an unreadable header says none but vision."""
    found = {"vision"} if model.projector else set()
    try:
        info = read_gguf_info(model.path)
    except GGUFError:
        return [name for name in CAPABILITIES if name in found]
    source = settings.chat_template or info.chat_template
    if source or settings.chat_format:
        found |= {"chat", "tools"}
    if source and _thinks(source, info.bos_token, info.eos_token):
        found.add("thinking")
    if info.pooling_type and not info.reranker:
        found.add("embeddings")
    if info.reranker or settings.reranker == "yes_no":
        found.add("rerank")
    if info.fill_in_middle:
        found.add("fill-in-the-middle")
    return [name for name in CAPABILITIES if name in found]


def _thinks(source: str, bos_token: str, eos_token: str) -> bool:
    try:
        return compiled(source, bos_token, eos_token).markup.thinking is not None
    except TemplateFailed:  # its chat requests say why
        return False
