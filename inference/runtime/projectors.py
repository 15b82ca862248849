"""Which multimodal projector (mmproj file) belongs to which model.

llama.cpp's projectors are GGUF files too (`general.architecture = clip`), but they are not
models: each belongs to one model, which can then take images as well as text. A projector
belongs to a model by its name beside it (`NAME.mmproj.gguf` or `mmproj-NAME.gguf` next to
`NAME.gguf`), by lying in the model's own folder (a folder of the models directory holding one
model: any `mmproj*.gguf` there, or a file whose header says it is a projector), or by the
model's `mmproj` setting, which wins over both. Pure functions over paths and settings: the
catalog calls them as it scans, from any thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from inference.config import ModelManagerConfig

PREFIX = "mmproj"  # mmproj-NAME.gguf, and any mmproj*.gguf in a model's folder
SUFFIX = ".mmproj.gguf"  # NAME.mmproj.gguf


def named_as_projector(path: Path) -> bool:
    """Whether the file's name alone says it is a projector (its header may say so too)."""
    return path.name.startswith(PREFIX) or path.name.endswith(SUFFIX)


def owner_by_name(path: Path) -> str | None:
    """The model a projector names: NAME for `NAME.mmproj.gguf` and `mmproj-NAME.gguf`."""
    if path.name.endswith(SUFFIX) and len(path.name) > len(SUFFIX):
        return path.name[: -len(SUFFIX)]
    if path.name.startswith(f"{PREFIX}-") and path.suffix == ".gguf" and len(path.name) > len(f"{PREFIX}-.gguf"):
        return path.stem[len(PREFIX) + 1 :]
    return None


def beside(models: Iterable[str], projectors: Iterable[Path]) -> tuple[dict[str, Path], list[str]]:
    """The projectors of the models directory itself, by the model they name (where one model
    has both, `NAME.mmproj.gguf`); and notes to log once on those left unused."""
    names = set(models)
    owned: dict[str, Path] = {}
    notes: list[str] = []
    for projector in sorted(projectors, key=_preference):
        owner = owner_by_name(projector)
        if owner not in names:
            notes.append(unowned_note(projector))
        elif owner in owned:
            notes.append(f"not using {projector}: {owner} has {owned[owner].name}")
        else:
            owned[owner] = projector
    return owned, notes


def in_folder(model: str, projectors: list[Path]) -> tuple[Path | None, str | None]:
    """The projector of the one model in a folder, among the folder's projectors, and a note to
    log when the choice was not obvious (several, none named for the model)."""
    if not projectors:
        return None, None
    named = [path for path in projectors if owner_by_name(path) == model]
    chosen = sorted(named or projectors, key=_preference)
    if len(chosen) == 1 or named:
        return chosen[0], None
    listed = ", ".join(path.name for path in chosen)
    note = (
        f"{model}'s folder {chosen[0].parent} holds several projectors ({listed}): using {chosen[0].name}; "
        f"set model_manager.models.{model}.mmproj to choose another"
    )
    return chosen[0], note


def _preference(path: Path) -> tuple[bool, str]:
    """NAME.mmproj.gguf before mmproj-NAME.gguf, then by name."""
    return not path.name.endswith(SUFFIX), path.name


def configured(config: ModelManagerConfig) -> dict[str, Path]:
    """The projectors named by the models' `mmproj` settings (absolute paths), by model."""
    return {name: Path(settings["mmproj"]) for name, settings in config.models.items() if settings.get("mmproj")}


def unowned_note(path: Path) -> str:
    return (
        f"{path} is a projector (mmproj) of no model here, so it is not listed: name it NAME.mmproj.gguf or "
        "mmproj-NAME.gguf beside NAME.gguf, put it in the model's own folder, or set model_manager.models.NAME.mmproj"
    )
