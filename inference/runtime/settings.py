"""The settings a model is loaded with, as its engine sees them (stdlib only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference.config import ModelSettings


@dataclass(frozen=True)
class LoadSettings:
    n_ctx: int
    n_gpu_layers: int
    n_threads: int
    n_threads_batch: int
    n_batch: int = 512
    flash_attn: bool | str = "auto"  # "auto": llama.cpp uses it where the backend supports it
    type_k: str = "f16"  # the KV cache's element types: "f16", "q8_0", "q4_0"
    type_v: str = "f16"
    use_mmap: bool = True
    use_mlock: bool = False
    chat_format: str = ""  # a llama-cpp-python chat format name; "" = the model's own template
    parallel: int = 1  # sequences decoded together
    embedding: bool = False  # an embedding context (EmbeddingEngine), not a generating one
    prompt_cache_mb: int = 0  # host RAM for prefixes that left their slots (runtime.prompt_cache)
    prompt_cache_disk_mb: int = 0  # disk for prefixes across unloads and restarts (runtime.prompt_store)
    prompt_cache_directory: str = ""
    speculative: str = "ngram"  # "ngram": draft from each sequence's own tokens (runtime.drafting); "off"
    projector: str = ""  # the model's multimodal projector file (runtime.llama.vision); "": text only
    reranker: str = "auto"  # "rank": its embedding context pools by rank, whatever its GGUF says

    @classmethod
    def of(
        cls, settings: ModelSettings, *, trained_context: int | None, embedding: bool, projector: Path | None = None
    ) -> LoadSettings:
        """What the engine needs of a model's settings; n_ctx capped to the trained context; the
        projector for a generating context only (embeddings read text)."""
        engine_keys = {option.name for option in fields(cls)}
        given = {key: value for key, value in asdict(settings).items() if key in engine_keys}
        computed = {
            "n_ctx": context_length(settings.n_ctx, trained_context),
            "embedding": embedding,
            "projector": str(projector) if projector and not embedding else "",
        }
        return cls(**given | computed)

    @property
    def batch_capacity(self) -> int:
        """Tokens one decode step may hold: every generating sequence adds one, so never fewer
        than `parallel` (config.json refuses n_batch < parallel; this holds for any source)."""
        return max(self.n_batch, self.parallel)

    def describe(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, n_gpu_layers={self.n_gpu_layers}, "
            f"n_threads={self.n_threads}/{self.n_threads_batch}, "
            + ("embeddings" if self.embedding else f"parallel={self.parallel}, speculative={self.speculative}")
            + (f", projector {Path(self.projector).name}" if self.projector else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def context_length(configured: int, trained: int | None) -> int:
    """The configured context capped to the trained one; 0 configured means the trained one."""
    if not trained:
        return configured
    return min(configured, trained) if configured else trained
