"""The only reader of config.json: validates it, applies defaults, returns a frozen Config.

The path comes from the environment variable LLAMA_SERVER_CONFIG, default `config.json` beside
manage.py. A missing file means all defaults (with a warning); a bad file raises one
ConfigError whose message names the file, the key and the problem.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_ENV_VAR = "LLAMA_SERVER_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ORIGIN_PATTERN = re.compile(r"^https?://[^/\s]+$")


class ConfigError(Exception):
    """config.json cannot be used; the message is one line for the user."""


def physical_cores() -> int:
    """Physical CPU cores (llama.cpp runs slower on hyper-threads), falling back to logical."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    physical_id = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical_id = value.strip()
        elif key == "core id":
            cores.add((physical_id, value.strip()))
    return len(cores) or os.cpu_count() or 1


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    cors_origins: tuple[str, ...]
    log_level: str


@dataclass(frozen=True)
class ModelManagerConfig:
    models_directory: Path
    default_model: str
    n_ctx: int
    n_gpu_layers: int
    n_threads: int
    idle_timeout: float
    check_interval: float


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    model_manager: ModelManagerConfig


@dataclass(frozen=True)
class _Key:
    """One config key: its default, a check that returns the problem (or None), and a meaning."""

    default: Any
    problem: Callable[[Any], str | None]
    meaning: str


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and ≤ {maximum}" if maximum is not None else ""
            return f"must be ≥ {minimum}{upper}"
        return None

    return check


def _number(minimum: float, *, exclusive: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "must be a number"
        if value < minimum or (exclusive and value == minimum):
            return f"must be {'>' if exclusive else '≥'} {minimum:g}"
        return None

    return check


def _string(*, allow_empty: bool) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        if not allow_empty and not value.strip():
            return "must not be empty"
        return None

    return check


def _log_level(value: Any) -> str | None:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        return f"must be one of {', '.join(LOG_LEVELS)}"
    return None


def _origins(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(origin, str) for origin in value):
        return "must be a list of strings"
    for origin in value:
        if origin != "*" and not _ORIGIN_PATTERN.match(origin):
            return f"{origin!r} is not '*' or an origin such as 'http://localhost:3000'"
    return None


SCHEMA: dict[str, dict[str, _Key]] = {
    "server": {
        "host": _Key("127.0.0.1", _string(allow_empty=False), "Address to listen on."),
        "port": _Key(8080, _integer(1, 65535), "TCP port to listen on."),
        "cors_origins": _Key(
            ["*"], _origins, "Origins allowed by CORS; `\"*\"` allows any origin."
        ),
        "log_level": _Key("INFO", _log_level, "Python logging level of the server."),
    },
    "model_manager": {
        "models_directory": _Key(
            "./models",
            _string(allow_empty=False),
            "Folder scanned for `*.gguf` models; relative to the config file's folder.",
        ),
        "default_model": _Key(
            "",
            _string(allow_empty=True),
            "Model used when a request names none; empty means the only model, if there is one.",
        ),
        "n_ctx": _Key(
            16384,
            _integer(0),
            "Context length in tokens, capped to what the model was trained with; 0 = the model's own.",
        ),
        "n_gpu_layers": _Key(
            -1, _integer(-1), "Layers offloaded to the GPU; -1 = all (ignored by CPU-only builds)."
        ),
        "n_threads": _Key(
            None, _integer(1), "Threads for generation; default: the machine's physical cores."
        ),
        "idle_timeout": _Key(
            300, _number(-1), "Seconds a model may sit idle before it is unloaded."
        ),
        "check_interval": _Key(
            60, _number(0, exclusive=True), "Seconds between idle checks."
        ),
    },
}


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR) or PROJECT_DIR / "config.json")


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        logger.warning("config file %s not found; using defaults", path)
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return document


def _section(path: Path, document: dict[str, Any], name: str) -> dict[str, Any]:
    """Validated values of one section, defaults filled in; unknown keys are only warned about."""
    raw = document.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {name}: must be a JSON object")
    keys = SCHEMA[name]
    for unknown in sorted(set(raw) - set(keys)):
        logger.warning("%s: unknown key %s.%s is ignored", path, name, unknown)
    values = {}
    for key, spec in keys.items():
        value = raw.get(key, spec.default)
        if value is None and spec.default is None:
            values[key] = None
            continue
        problem = spec.problem(value)
        if problem:
            raise ConfigError(f"{path}: {name}.{key}: {problem} (got {json.dumps(value)})")
        values[key] = value
    return values


def load_config(path: Path | None = None) -> Config:
    """Read and validate config.json (or the given file); raises ConfigError."""
    path = (path or config_path()).resolve()
    document = _read(path)
    for unknown in sorted(set(document) - set(SCHEMA)):
        logger.warning("%s: unknown section %s is ignored", path, unknown)
    server = _section(path, document, "server")
    manager = _section(path, document, "model_manager")
    server["cors_origins"] = tuple(server["cors_origins"])
    server["log_level"] = server["log_level"].upper()
    manager["models_directory"] = (path.parent / manager["models_directory"]).resolve()
    manager["n_threads"] = manager["n_threads"] or physical_cores()
    return Config(
        path=path,
        server=ServerConfig(**server),
        model_manager=ModelManagerConfig(**manager),
    )


_current: Config | None = None


def get_config() -> Config:
    """The configuration in force (read once, then kept until replaced)."""
    global _current
    if _current is None:
        _current = load_config()
    return _current


def set_config(config: Config | None) -> None:
    """Put a configuration in force; None means read the file again on next use."""
    global _current
    _current = config
