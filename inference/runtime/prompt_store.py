"""The prompt cache on disk: prefixes that outlive their model's unload and the server's restart.

When a model's engine closes (idle unload, eviction for another model, shutdown), its hottest
prefixes — the slots' sequences and the host-RAM cache's entries, most recently used first — are
written to `prompt_cache_directory`, under a folder named for the model file's identity: its
name, size and modification time and the settings that shape its KV cells. A replaced or
reconfigured model gets a new folder, so it never restores a stale state (and the old folders
are removed as it loads). After the model loads again, the first prompt that begins with a
stored prefix restores it (`PromptCache.longest` considers these too). The directory holds at
most `prompt_cache_disk_mb`: the least recently used files go first.

A file is a magic line, a JSON line with the prefix's tokens, then llama.cpp's sequence state.
It is written to a temporary name and renamed into place. A file that cannot be read back (torn,
truncated, not ours) is logged and removed, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MAGIC = b"llamasite-prompt-cache 1\n"
SUFFIX = ".prefix"
# LoadSettings that change what a sequence's KV state is, or whether llama.cpp accepts it back.
KV_SETTINGS = ("n_ctx", "n_gpu_layers", "flash_attn", "parallel", "type_k", "type_v")


def identity(model_path: Path, settings: dict[str, Any]) -> str:
    """The folder name of a model file as it is loaded now."""
    stat = model_path.stat()
    shaping: list[Any] = [
        model_path.name,
        stat.st_size,
        stat.st_mtime_ns,
        {key: settings.get(key) for key in KV_SETTINGS},
    ]
    if settings.get("projector"):  # a cached image's cells are its projector's embeddings
        projector = Path(settings["projector"])
        projector_stat = projector.stat()
        shaping += [projector.name, projector_stat.st_size, projector_stat.st_mtime_ns]
    digest = hashlib.sha256(json.dumps(shaping).encode())
    return f"{model_path.stem}-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class StoredPrefix:
    tokens: tuple[int, ...]
    path: Path
    size_bytes: int


class PromptStore:
    """One model identity's folder of stored prefixes, inside the shared directory's budget."""

    def __init__(self, directory: Path, folder: str, budget_bytes: int) -> None:
        self.directory = directory
        self.folder = directory / folder
        self.budget_bytes = budget_bytes

    def open(self) -> list[StoredPrefix]:
        """The prefixes stored for this identity (folders of the same model's other identities
        are removed: they can never be used again)."""
        stem = self.folder.name.rsplit("-", 1)[0]
        for stale in self.directory.glob(f"{stem}-*"):
            if stale != self.folder and stale.is_dir() and stale.name.rsplit("-", 1)[0] == stem:
                shutil.rmtree(stale, ignore_errors=True)
                logger.info(
                    "removed the prompt cache of an earlier %s (file or settings changed): %s", stem, stale.name
                )
        found = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            tokens = self._tokens(path)
            if tokens is not None:
                found.append(StoredPrefix(tokens, path, path.stat().st_size))
        if found:
            logger.info("%d stored prompt prefixes for %s", len(found), stem)
        return found

    def state(self, stored: StoredPrefix) -> bytes | None:
        """The stored state, or None (logged, the file removed) if it cannot be read."""
        try:
            with stored.path.open("rb") as file:
                if file.readline() != MAGIC:
                    raise ValueError("not a prompt cache file")
                json.loads(file.readline())
                state = file.read()
            if not state:
                raise ValueError("no state after the header")
            os.utime(stored.path)  # recently used: pruned last
            return state
        except (OSError, ValueError) as error:
            self._unreadable(stored.path, error)
            return None

    def write(self, prefixes: list[tuple[tuple[int, ...], bytes]]) -> int:
        """Store prefixes (hottest first) while they fit the budget, then prune the directory to
        it; how many were written. Failures are logged: the cache is an optimisation."""
        written = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for tokens, state in prefixes:
                if len(state) > self.budget_bytes:
                    continue
                name = hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:32] + SUFFIX
                with tempfile.NamedTemporaryFile(dir=self.folder, delete=False, suffix=".tmp") as file:
                    file.write(MAGIC + json.dumps(list(tokens)).encode() + b"\n" + state)
                os.replace(file.name, self.folder / name)
                written += 1
            self._prune()
        except OSError as error:
            logger.warning("could not store the prompt cache in %s: %s", self.folder, error)
        return written

    def _prune(self) -> None:
        """Remove the least recently used files of the whole directory beyond the budget."""
        files = sorted(self.directory.glob(f"*/*{SUFFIX}"), key=lambda path: path.stat().st_mtime)
        total = sum(path.stat().st_size for path in files)
        for path in files:
            if total <= self.budget_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)

    def _tokens(self, path: Path) -> tuple[int, ...] | None:
        try:
            with path.open("rb") as file:
                if file.readline() != MAGIC:
                    raise ValueError("not a prompt cache file")
                tokens = json.loads(file.readline())
            if not isinstance(tokens, list) or not tokens or not all(isinstance(token, int) for token in tokens):
                raise ValueError("no tokens in its header")
            return tuple(tokens)
        except (OSError, ValueError) as error:
            self._unreadable(path, error)
            return None

    def _unreadable(self, path: Path, error: Exception) -> None:
        logger.warning("ignoring the unreadable prompt cache file %s: %s", path, error)
        path.unlink(missing_ok=True)
