"""How much memory a model will take once loaded, estimated from its GGUF header and settings.

`model_manager.max_memory_mb` refuses or makes room for a load by this estimate, so that a
model too big for the machine gets a clear error instead of the kernel's OOM killer. The
estimate errs high: weights (the file), the KV cache (in its `type_k`/`type_v`), the compute buffers and the whole
budget of its host-RAM prompt cache (`prompt_cache_mb`, which fills as prefixes leave slots).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inference.config import ModelSettings
from inference.runtime.catalog import ModelFile
from inference.runtime.errors import ModelTooLarge
from inference.runtime.gguf_header import GGUFError, GGUFInfo, read_gguf_info
from inference.runtime.settings import context_length

MIB = 1024 * 1024
# Bytes per KV cache element: f16, and llama.cpp's q8_0 and q4_0 blocks (32 values with an f16 scale).
_KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
_F32_BYTES = 4
# Buffers llama.cpp allocates whatever the model (threads' scratch, output, graph).
_FIXED_OVERHEAD_BYTES = 32 * MIB


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    prompt_cache: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.prompt_cache

    def describe(self) -> str:
        return (
            f"about {self.total / MIB:,.0f} MB: weights {self.weights / MIB:,.0f} MB, "
            f"KV cache {self.kv_cache / MIB:,.0f} MB, compute buffers {self.compute / MIB:,.0f} MB"
            + (f", prompt cache up to {self.prompt_cache / MIB:,.0f} MB" if self.prompt_cache else "")
        )


def memory_estimate(
    info: GGUFInfo,
    *,
    file_bytes: int,
    n_ctx: int,
    n_batch: int,
    prompt_cache_bytes: int = 0,
    type_k: str = "f16",
    type_v: str = "f16",
) -> MemoryEstimate:
    """Weights, KV cache for `n_ctx` cells (all slots share one unified cache) in its element
    types, the compute buffers of one `n_batch` step, the larger of its logits and (without flash
    attention) its attention scores (the graph allocator reuses one for the other), and the
    prompt cache."""
    per_cell = info.key_length * _KV_BYTES[type_k] + info.value_length * _KV_BYTES[type_v]
    kv_cache = math.ceil(n_ctx * info.block_count * info.head_count_kv * per_cell)
    attention_scores = n_batch * n_ctx * info.head_count * _F32_BYTES
    logits = n_batch * info.vocab_size * _F32_BYTES
    return MemoryEstimate(
        weights=file_bytes,
        kv_cache=kv_cache,
        compute=max(attention_scores, logits) + _FIXED_OVERHEAD_BYTES,
        prompt_cache=prompt_cache_bytes,
    )


def model_memory_estimate(model: ModelFile, settings: ModelSettings) -> MemoryEstimate | None:
    """The estimate of loading `model` with `settings`; None for an unreadable header. Reads the
    file's header (once per file version): not on the event loop."""
    try:
        info = read_gguf_info(model.path)
    except GGUFError:
        return None
    return memory_estimate(
        info,
        file_bytes=model.size_bytes,
        n_ctx=context_length(settings.n_ctx, info.context_length),
        n_batch=settings.n_batch,
        prompt_cache_bytes=settings.prompt_cache_mb * MIB,
        type_k=settings.type_k,
        type_v=settings.type_v,
    )


def memory_needed(model: ModelFile, settings: ModelSettings, limit: int) -> int:
    """The estimated bytes of loading `model` under a limit of `limit` bytes; raises
    ModelTooLarge for a model that could never fit. 0 for an unreadable header: the load fails,
    saying why. Reads the file: not on the event loop."""
    estimate = model_memory_estimate(model, settings)
    if estimate is None:
        return 0
    if estimate.total > limit:
        raise ModelTooLarge(
            model=model.name,
            estimate=estimate.describe(),
            needed_mb=estimate.total // MIB,
            limit_mb=limit // MIB,
            pinned_mb=0,
        )
    return estimate.total
