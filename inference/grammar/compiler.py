"""Grammars for JSON schemas as requests need them: built on a thread of their own, bounded
(`budget`), and kept by schema, so the event loop never builds one and a schema sent again
(an agent's tools every turn) is not built again.

The thread is one: a flood of costly schemas queues there, each at most a budget's worth of
work, while requests without a schema never wait for it. A request that goes away before its
grammar's turn takes its work off the queue. Refusals are kept too: sending a refused schema
again costs a lookup. The cache is bounded by its entries' bytes; least recently used goes first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from inference.grammar.budget import Budget, SchemaTooComplex
from inference.grammar.keywords import SchemaNotSupported
from inference.grammar.schema import json_schema_grammar

CACHE_BYTES = 16 * 1024 * 1024
_ENTRY_OVERHEAD = 200  # bytes of a cache entry besides its grammar (key, node, object headers)

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")


class SchemaRefused(ValueError):
    """A schema this server builds no grammar for: one it cannot enforce (`reason` names the
    keyword), or one too complex to build within the bound."""

    def __init__(self, reason: str, *, too_complex: bool) -> None:
        super().__init__(reason)
        self.reason, self.too_complex = reason, too_complex


@dataclass(frozen=True)
class _Refusal:
    reason: str
    too_complex: bool


class GrammarCache:
    """Grammars (or the refusal) by the sha256 of their schema's canonical JSON, least recently
    used first out; any thread."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[bytes, str | _Refusal] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> str | _Refusal | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, entry: str | _Refusal) -> None:
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = entry
            self.size += _size(entry)
            while self.size > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.size -= _size(dropped)

    def __len__(self) -> int:
        return len(self._entries)


def _size(entry: str | _Refusal) -> int:
    return _ENTRY_OVERHEAD + len(entry if isinstance(entry, str) else entry.reason)


cache = GrammarCache()


def cached_schema_grammar(schema: dict[str, Any]) -> str:
    """The grammar of `schema`, from the cache or built within the budget (the schema's own JSON
    text counts toward it); raises SchemaRefused, also from the cache."""
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    entry = cache.get(key)
    if entry is None:
        budget = Budget()
        try:
            budget.spend(len(text))
            entry = json_schema_grammar(schema, budget)
        except SchemaNotSupported as problem:
            entry = _Refusal(str(problem), too_complex=False)
        except SchemaTooComplex as problem:
            entry = _Refusal(str(problem), too_complex=True)
        cache.put(key, entry)
    if isinstance(entry, _Refusal):
        raise SchemaRefused(entry.reason, too_complex=entry.too_complex)
    return entry


async def schema_grammar(schema: dict[str, Any]) -> str:
    """`cached_schema_grammar` on the grammar thread: the caller's event loop only waits."""
    return await asyncio.wrap_future(_executor.submit(cached_schema_grammar, schema))
