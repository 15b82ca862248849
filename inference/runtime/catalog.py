"""Which files are models, the names and aliases they answer to, and their projectors.

A model is a `*.gguf` file in the models directory, named by its file name without `.gguf`,
or the one model in a folder of its own there (one level down, no deeper; a folder holding
several models is not looked into). A split model (`name-00001-of-00003.gguf`, …) is listed
once, as `name`, by its first part. Multimodal projectors (`mmproj*` files, and any file whose
GGUF header says `clip`) are not models: each belongs to one (runtime.projectors says which),
which then takes images as well as text. Files that resolve outside the directory (symlinks
pointing out) are never offered, nor are files shorter than the tensor data their GGUF header
describes (a copy still under way, or a file cut off): such a file is listed once it is
complete. Headers are read by runtime.gguf_header, once per file version.

A Catalog is shared by every thread (requests, the reaper, reloads); it holds no lock of its
own beyond the one that keeps what it logs (the directory missing, a projector of no model)
logged once.
"""

from __future__ import annotations

import glob
import logging
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from inference.config import ModelManagerConfig
from inference.runtime import projectors
from inference.runtime.errors import ModelNotFound, NoModelGiven
from inference.runtime.gguf_header import GGUFError, GGUFIncomplete, read_gguf_info

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
_SPLIT_PATTERN = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})$")


class ModelsDirectoryMissing(Exception):
    """The configured models directory does not exist or is not a directory."""


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    size_bytes: int
    modified: float
    projector: Path | None = None  # its multimodal projector (mmproj); None: it takes text only

    @property
    def input_modalities(self) -> list[str]:
        """What a request to it may hold: text, and images where it has a projector."""
        return ["text", "image"] if self.projector else ["text"]


class Scan(NamedTuple):
    """What one look at the models directory found."""

    models: dict[str, ModelFile]  # by name, sorted by name
    incomplete: dict[Path, tuple[int, int]]  # not listed until complete: (inode, bytes its header describes)
    folders: dict[Path, int] = {}  # the folders in the directory, and their mtimes (ns) when scanned
    notes: tuple[str, ...] = ()  # what to log once: projectors of no model, unclear choices


@dataclass
class _Found:
    """One folder's models and projectors, before projectors are given to models."""

    models: dict[str, ModelFile] = field(default_factory=dict)
    projectors: list[Path] = field(default_factory=list)


def scan(directory: Path) -> Scan:
    """Every model in `directory` (with its projector), and the files that will be models or
    projectors once they are complete."""
    if not directory.is_dir():
        raise ModelsDirectoryMissing(f"models directory {directory} does not exist")
    root = directory.resolve()
    incomplete: dict[Path, tuple[int, int]] = {}
    top = _scan_folder(directory, root, incomplete)
    owned, notes = projectors.beside(top.models, top.projectors)
    found = {name: replace(model, projector=owned.get(name)) for name, model in top.models.items()}
    folders: dict[Path, int] = {}
    for folder in sorted(directory.iterdir()):
        try:
            if folder.name.startswith(".") or not folder.is_dir() or not folder.resolve().is_relative_to(root):
                continue
            modified = folder.stat().st_mtime_ns
        except OSError:
            continue
        folders[folder] = modified  # watched: a model put there later is found
        inner = _scan_folder(folder, root, incomplete)
        if len(inner.models) != 1:
            continue  # not a model's own folder: not looked into
        [(name, model)] = inner.models.items()
        if name in found:
            notes.append(f"not listing {model.path}: a model named {name} is listed already ({found[name].path})")
            continue
        projector, note = projectors.in_folder(name, inner.projectors)
        notes += [note] if note else []
        found[name] = replace(model, projector=projector)
    return Scan(dict(sorted(found.items())), incomplete, folders, tuple(notes))


def _scan_folder(folder: Path, root: Path, incomplete: dict[Path, tuple[int, int]]) -> _Found:
    """The models and projectors directly in `folder` (files short of their data go to `incomplete`)."""
    found = _Found()
    for path in folder.iterdir():
        projector = projectors.named_as_projector(path) and path.suffix == GGUF_SUFFIX and path.name[0] != "."
        name = None if projector else listed_name(path)
        if name is None and not projector:
            continue
        try:
            resolved = path.resolve(strict=True)
            if not resolved.is_relative_to(root) or not resolved.is_file():
                logger.warning("ignoring %s: it resolves outside %s", path, root)
                continue
            stat = resolved.stat()
        except OSError:
            continue  # vanished or a dangling link: not a model
        try:
            projector = read_gguf_info(path).projector or projector
        except GGUFIncomplete as exc:
            logger.warning("not listing %s: %s", name or path.name, exc)
            incomplete[path] = (stat.st_ino, exc.expected)
            continue
        except GGUFError:
            pass  # listed all the same: loading it fails with a 503 that says what is wrong
        if projector or name is None:
            found.projectors.append(path)
            continue
        size = stat.st_size + _other_split_parts_size(path, name)
        found.models[name] = ModelFile(name=name, path=path, size_bytes=size, modified=stat.st_mtime)
    return found


def _changed_since(scanned: Scan) -> bool:
    """Whether the models may have changed though the directory did not: a file that was short
    at the last scan may be complete now (or was replaced; a file growing in place does not
    change the directory, which the scan is cached by), or a model's own folder changed."""
    for path, (inode, expected) in scanned.incomplete.items():
        try:
            stat = path.stat()
        except OSError:
            return True
        if stat.st_ino != inode or stat.st_size >= expected:
            return True
    for folder, modified in scanned.folders.items():
        try:
            if folder.stat().st_mtime_ns != modified:
                return True
        except OSError:
            return True
    return False


def listed_name(path: Path) -> str | None:
    """The name discovery lists this file under, or None if it is not a model (nor a first part).

    Only `*.gguf` counts: a download still under way (`NAME.gguf.part`) is never listed.
    """
    if path.suffix != GGUF_SUFFIX or path.name.startswith(".") or projectors.named_as_projector(path):
        return None
    split = _SPLIT_PATTERN.match(path.stem)
    if split is None:
        return path.stem
    return split["stem"] if int(split["part"]) == 1 else None


def _other_split_parts_size(first_part: Path, name: str) -> int:
    return sum(part.stat().st_size for part in split_parts(first_part, name) if part != first_part)


def split_parts(first_part: Path, name: str) -> list[Path]:
    """Every part of the split model `name` whose first part this is (none: it is not split)."""
    if first_part.stem == name:
        return []
    return sorted(
        part
        for part in first_part.parent.glob(f"{glob.escape(name)}-*-of-*{GGUF_SUFFIX}")
        if (split := _SPLIT_PATTERN.match(part.stem)) is not None and split["stem"] == name
    )


def strip_suffix(requested: str) -> str:
    """A requested model name without its optional `.gguf` extension."""
    return requested[: -len(GGUF_SUFFIX)] if requested.endswith(GGUF_SUFFIX) else requested


@dataclass(frozen=True)
class ModelChanges:
    """What a reload found: models added, removed, and changed (file or settings)."""

    added: list[str]
    removed: list[str]
    changed: list[str]


class Catalog:
    """The models of the configured directory, by name or alias.

    The directory is scanned again only when it changed (files added, removed, renamed, in it
    or in its folders), or when a file it found incomplete has grown to its size: a request
    costs one stat per folder, not one per model file.
    """

    def __init__(self, config: ModelManagerConfig) -> None:
        self.config = config
        self._scanned: tuple[tuple[int, int], Scan] | None = None
        self._listed: tuple[Scan, ModelManagerConfig, dict[str, ModelFile]] | None = None
        self._log_lock = threading.Lock()
        self._logged: set[str] = set()
        self.directory_missing = False
        self.known = self.available()  # as of the last reload: what the next one compares with

    def available(self) -> dict[str, ModelFile]:
        """The models in the directory now (empty, with an error logged once, if it is missing)."""
        directory = self.config.models_directory
        try:
            stat = directory.stat()
            version = (stat.st_ino, stat.st_mtime_ns)
            scanned = self._scanned
            if scanned is None or scanned[0] != version or _changed_since(scanned[1]):
                scanned = self._scanned = (version, scan(directory))
            missing = False
        except (ModelsDirectoryMissing, FileNotFoundError, NotADirectoryError):
            self._scanned, scanned, missing = None, None, True
        with self._log_lock:  # requests and the reaper notice at once: log each change once
            changed, self.directory_missing = missing != self.directory_missing, missing
            notes = [note for note in scanned[1].notes if note not in self._logged] if scanned else []
            self._logged.update(notes)
        if changed and missing:
            logger.error("models directory %s does not exist; no models can be served until it does", directory)
        elif changed:
            logger.info("models directory %s is back", directory)
        for note in notes:
            logger.warning("%s", note)
        return self._with_settings(scanned[1]) if scanned else {}

    def _with_settings(self, scanned: Scan) -> dict[str, ModelFile]:
        """The scan's models with the projectors their `mmproj` settings name (a file named there
        is a projector, never a model)."""
        listed, config = self._listed, self.config
        if listed is not None and listed[0] is scanned and listed[1] is config:
            return listed[2]
        named = projectors.configured(config)
        models = scanned.models
        if named:
            taken = {path.resolve() for path in named.values()}
            models = {
                name: replace(model, projector=named.get(name, model.projector))
                for name, model in models.items()
                if model.path.resolve() not in taken
            }
        self._listed = (scanned, config, models)
        return models

    def resolve(self, requested: str | None, allowed: list[str] | None = None) -> ModelFile:
        """The model a request asks for (None: the default model), by its name or an alias;
        raises NoModelGiven or ModelNotFound.

        With `allowed` (an API key's models) the others do not exist, for that key.
        """
        available = self.available()
        if allowed:
            available = {name: model for name, model in available.items() if name in allowed}
        if requested:
            name = strip_suffix(requested)
        elif self.config.default_model:
            name = strip_suffix(self.config.default_model)
        elif len(available) == 1:
            name = next(iter(available))
        else:
            raise NoModelGiven(available=list(available))
        alias_of = None
        if name not in available and name in self.config.aliases:  # a model file of that name wins
            alias_of, name = name, strip_suffix(self.config.aliases[name])
        if name not in available:
            raise self.not_found(name, available, alias_of)
        return available[name]

    def not_found(self, name: str, available: dict[str, ModelFile], alias_of: str | None = None) -> ModelNotFound:
        """The error for a model that is not among `available` (saying if the directory is gone)."""
        return ModelNotFound(
            requested=name,
            alias_of=alias_of,
            available=list(available),
            directory=str(self.config.models_directory),
            directory_missing=self.directory_missing,
        )

    def aliases(self, models: dict[str, ModelFile]) -> dict[str, ModelFile]:
        """The configured aliases of these models (an alias that is a model's own name is not)."""
        return {
            alias: models[strip_suffix(target)]
            for alias, target in self.config.aliases.items()
            if alias not in models and strip_suffix(target) in models
        }

    def reload(self, config: ModelManagerConfig) -> ModelChanges:
        """Put new settings in force and rediscover: what changed since the last reload."""
        previous_config, previous = self.config, self.known
        self.config = config
        known = self.known = self.available()
        return ModelChanges(
            added=sorted(known.keys() - previous.keys()),
            removed=sorted(previous.keys() - known.keys()),
            changed=sorted(
                name
                for name in known.keys() & previous.keys()
                if (known[name].size_bytes, known[name].modified, known[name].projector)
                != (previous[name].size_bytes, previous[name].modified, previous[name].projector)
                or config.settings_for(name) != previous_config.settings_for(name)
            ),
        )
