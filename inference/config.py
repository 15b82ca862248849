"""The only reader of config.json: validates it, applies defaults, returns a frozen Config.

The path comes from the environment variable LLAMA_SERVER_CONFIG, default `config.json` beside
manage.py. A missing file means all defaults (with a warning); a bad file raises one
ConfigError whose message names the file, the key and the problem.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inference import cpus

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_ENV_VAR = "LLAMA_SERVER_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ORIGIN_PATTERN = re.compile(r"^https?://[^/\s]+$")
# model_manager.preload: the models that served the most requests in the last 24 hours.
AUTO_PRELOAD = "auto"
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed")
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


class ConfigError(Exception):
    """config.json cannot be used; the message is one line for the user."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    cors_origins: tuple[str, ...]
    log_level: str
    instance_name: str
    require_api_key: bool | None  # None: only when listening beyond this machine
    allowed_hosts: tuple[str, ...]
    max_body_bytes: int  # given, or (null) 8 MiB for the text plus one max_image_bytes image in base64
    behind_https_proxy: bool
    peers: tuple[str, ...]  # other llamasite servers' base URLs, for the models this one lacks
    api_key_cache_seconds: float  # how long a verified key is accepted while the database is away
    fetch_image_urls: bool  # an image given by an http(s) URL is fetched (serving.image_urls), else refused
    max_image_bytes: int  # the largest image a request may carry, decoded or fetched
    image_fetch_timeout: float  # seconds one image by URL may take to fetch, redirects included

    @property
    def instance(self) -> str:
        """This server's name in shared records: instance_name, or host:port."""
        return self.instance_name or f"{self.host}:{self.port}"

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)

    @property
    def api_key_required(self) -> bool:
        return not self.loopback_only if self.require_api_key is None else self.require_api_key

    @property
    def host_names(self) -> tuple[str, ...]:
        """Django's ALLOWED_HOSTS: allowed_hosts, or the names this address answers to."""
        if self.allowed_hosts:
            return self.allowed_hosts
        if self.host in ("0.0.0.0", "::", ""):
            return ("*",)  # every interface: any name may reach it (set allowed_hosts to narrow)
        return tuple(dict.fromkeys((self.host, "localhost", "127.0.0.1", "[::1]")))


@dataclass(frozen=True)
class ModelSettings:
    """How one model is loaded and kept: model_manager's values, overridden per model."""

    n_ctx: int
    n_gpu_layers: int
    n_threads: int
    n_threads_batch: int
    n_batch: int
    flash_attn: bool | str
    type_k: str  # the KV cache's keys: "f16", "q8_0" or "q4_0" (llama.cpp's --cache-type-k)
    type_v: str  # its values; quantized only with flash attention
    use_mmap: bool
    use_mlock: bool
    chat_format: str
    chat_template: str  # Jinja text in place of the GGUF's own ("": the GGUF's); a .jinja path is read at load
    chat_template_kwargs: dict[str, Any]  # passed to the template (e.g. enable_thinking), under the request's
    mmproj: str  # its multimodal projector file, absolute ("": one found beside the model, or none)
    reasoning_format: str  # "auto": thinking apart from the answer; "none": all of it as the answer
    reasoning_budget: int  # most tokens a request may think; -1: no limit
    reranker: str  # how /v1/rerank scores: "rank" (a reranker's head), "yes_no" (P("yes")), "auto": as the GGUF says
    parallel: int
    idle_timeout: float
    pinned: bool
    prompt_cache_mb: int  # host RAM for the KV state of prefixes that left their slots; 0: none
    prompt_cache_disk_mb: int  # the directory's bound, for prefixes across unloads and restarts; 0: none
    prompt_cache_directory: str  # absolute (relative ones are taken from config.json's folder)
    speculative: str  # "ngram" | "off"
    # Sampling when a request does not say (its own values win); llama.cpp server's by default.
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None  # None: a random seed per request

    def sampling_defaults(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SAMPLING_KEYS}


@dataclass(frozen=True)
class ModelManagerConfig:
    models_directory: Path
    default_model: str
    check_interval: float
    max_loaded_models: int
    max_queue: int  # requests waiting per model before a 503
    max_memory_mb: int  # 0: no limit
    shutdown_grace_seconds: float
    defaults: ModelSettings
    models: dict[str, dict[str, Any]]
    aliases: dict[str, str]  # another name a request may use for a model, e.g. "gpt-4o-mini"
    # Models loaded in the background once the server answers: names, or AUTO_PRELOAD.
    preload: tuple[str, ...] | str
    max_pull_mb: int  # the largest file a pull downloads; 0: no limit

    def settings_for(self, name: str, overrides: dict[str, Any] | None = None) -> ModelSettings:
        """A model's effective settings: defaults < model_manager.models.<name> < `overrides`."""
        return replace(self.defaults, **self.models.get(name, {}), **(overrides or {}))


@dataclass(frozen=True)
class RecordsConfig:
    request_records: bool
    usage_retention_days: int
    pending_limit: int  # records kept in memory while the database is away


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    model_manager: ModelManagerConfig
    records: RecordsConfig


@dataclass(frozen=True)
class _Key:
    """One config key: its default and a check that returns the problem (or None)."""

    default: Any
    problem: Callable[[Any], str | None]


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


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _flash_attn(value: Any) -> str | None:
    return None if isinstance(value, bool) or value == "auto" else 'must be true, false or "auto"'


def _fraction(value: Any) -> str | None:
    problem = _number(0)(value)
    return problem or ("must be ≤ 1" if value > 1 else None)


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else "must be " + " or ".join(json.dumps(choice) for choice in allowed)

    return check


def _log_level(value: Any) -> str | None:
    ok = isinstance(value, str) and value.upper() in LOG_LEVELS
    return None if ok else f"must be one of {', '.join(LOG_LEVELS)}"


def _urls(listing: str, example: str, *, star: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not all(isinstance(url, str) for url in value):
            return f"must be a list of {listing}"
        for url in value:
            if not (star and url == "*") and not _ORIGIN_PATTERN.match(url):
                return f"{url!r} is not {example}"
        return None

    return check


def _strings(value: Any) -> str | None:
    ok = isinstance(value, list) and all(isinstance(item, str) and item for item in value)
    return None if ok else "must be a list of non-empty strings"


def _aliases(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(name, str) and name for name in value.values())
    return None if ok else "must be an object of {alias: model name}"


def _preload(value: Any) -> str | None:
    if value == AUTO_PRELOAD or _strings(value) is None:
        return None
    return f'must be a list of model names or "{AUTO_PRELOAD}"'


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be a JSON object"


def _table(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(entry, dict) for entry in value.values())
    return None if ok else "must be an object of {model name: {setting: value}}"


# Settings of a model: model_manager holds their defaults, model_manager.models.<name> overrides.
MODEL_KEYS: dict[str, _Key] = {
    "n_ctx": _Key(16384, _integer(0)),
    "n_gpu_layers": _Key(-1, _integer(-1)),
    "n_threads": _Key(None, _integer(1)),
    "n_threads_batch": _Key(None, _integer(1)),
    "n_batch": _Key(512, _integer(1)),
    "flash_attn": _Key("auto", _flash_attn),
    "type_k": _Key("f16", _one_of(*KV_CACHE_TYPES)),
    "type_v": _Key("f16", _one_of(*KV_CACHE_TYPES)),
    "use_mmap": _Key(True, _boolean),
    "use_mlock": _Key(False, _boolean),
    "chat_format": _Key("", _string(allow_empty=True)),
    "chat_template": _Key("", _string(allow_empty=True)),
    "chat_template_kwargs": _Key({}, _object),
    "mmproj": _Key("", _string(allow_empty=True)),  # per model only: a path, checked at reading
    "reasoning_format": _Key("auto", _one_of("auto", "none")),
    "reasoning_budget": _Key(-1, _integer(-1)),
    "reranker": _Key("auto", _one_of("auto", "rank", "yes_no")),
    "parallel": _Key(4, _integer(1, 256)),
    "idle_timeout": _Key(300, _number(-1)),
    "pinned": _Key(False, _boolean),
    "prompt_cache_mb": _Key(1024, _integer(0)),
    "prompt_cache_disk_mb": _Key(4096, _integer(0)),
    "prompt_cache_directory": _Key("prompt-cache", _string(allow_empty=False)),
    "speculative": _Key("ngram", _one_of("ngram", "off")),  # by prompt lookup (runtime.drafting), or "off"
    # Sampling defaults for requests that leave them out (llama.cpp server's values).
    "temperature": _Key(0.8, _number(0)),
    "top_p": _Key(0.95, _fraction),
    "top_k": _Key(40, _integer(0)),
    "min_p": _Key(0.05, _fraction),
    "seed": _Key(None, _integer(0)),
}

SCHEMA: dict[str, dict[str, _Key]] = {
    "server": {
        "host": _Key("127.0.0.1", _string(allow_empty=False)),
        "port": _Key(8080, _integer(1, 65535)),
        "cors_origins": _Key(["*"], _urls("strings", "'*' or an origin such as 'http://localhost:3000'", star=True)),
        "log_level": _Key("INFO", _log_level),
        "instance_name": _Key("", _string(allow_empty=True)),
        "require_api_key": _Key(None, _boolean),
        "allowed_hosts": _Key([], _strings),
        "max_body_bytes": _Key(None, _integer(1024)),
        "behind_https_proxy": _Key(False, _boolean),
        "peers": _Key([], _urls("URLs", "a server's base URL such as 'http://127.0.0.1:8081'")),
        "api_key_cache_seconds": _Key(60, _number(0)),
        "fetch_image_urls": _Key(False, _boolean),
        "max_image_bytes": _Key(20 * 1024 * 1024, _integer(1)),
        "image_fetch_timeout": _Key(10, _number(0, exclusive=True)),
    },
    "model_manager": {
        "models_directory": _Key("./models", _string(allow_empty=False)),
        "default_model": _Key("", _string(allow_empty=True)),
        "check_interval": _Key(60, _number(0, exclusive=True)),
        "max_loaded_models": _Key(2, _integer(1)),
        "max_queue": _Key(64, _integer(0)),
        "max_memory_mb": _Key(0, _integer(0)),
        "shutdown_grace_seconds": _Key(30, _number(0)),
        **MODEL_KEYS,
        "models": _Key({}, _table),
        "aliases": _Key({}, _aliases),
        "preload": _Key([], _preload),
        # The largest file a pull downloads (MiB; 0: no limit). 100 GiB: above any one file on
        # Hugging Face (at most 50 GB), below what an endless body should be let write.
        "max_pull_mb": _Key(100 * 1024, _integer(0)),
    },
    "records": {
        "request_records": _Key(True, _boolean),
        "usage_retention_days": _Key(90, _integer(0)),
        "pending_limit": _Key(10000, _integer(1)),
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
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return document


def _validated(path: Path, where: str, raw: Any, keys: dict[str, _Key]) -> dict[str, Any]:
    """The known keys given in one JSON object, checked; unknown keys are only warned about."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {where}: must be a JSON object")
    for unknown in sorted(set(raw) - set(keys)):
        logger.warning("%s: unknown key %s.%s is ignored", path, where, unknown)
    values = {}
    for key, spec in keys.items():
        if key not in raw:
            continue
        if (value := raw[key]) is None and spec.default is None:
            continue
        problem = spec.problem(value)
        if problem:
            raise ConfigError(f"{path}: {where}.{key}: {problem} (got {json.dumps(value)})")
        values[key] = value
    return values


def _section(path: Path, document: dict[str, Any], name: str) -> dict[str, Any]:
    """One section's values, checked, with defaults for the keys it lacks."""
    keys = SCHEMA[name]
    values = _validated(path, name, document.get(name, {}), keys)
    return {key: values.get(key, spec.default) for key, spec in keys.items()}


def _template_text(path: Path, where: str, value: str) -> str:
    """A chat_template setting's Jinja: the value itself, or (a value with no Jinja tags in it)
    the file it names, absolute or relative to config.json's folder."""
    if "{%" in value or "{{" in value:
        return value
    file = path.parent / value
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"{path}: {where}.chat_template: cannot read {file}: {reason}") from None
    if not text.strip():
        raise ConfigError(f"{path}: {where}.chat_template: {file} is empty")
    return text


def _projector_file(path: Path, where: str, value: str) -> str:
    """An mmproj setting's file, absolute (relative ones from config.json's folder): it must exist."""
    file = (path.parent / value).resolve()
    if not file.is_file():
        raise ConfigError(f"{path}: {where}.mmproj: no projector file {file}")
    return str(file)


def _refuse_impossible(path: Path, where: str, settings: ModelSettings) -> None:
    """ConfigError for settings that are each valid but cannot work together."""
    if where == "model_manager" and settings.mmproj:
        raise ConfigError(f"{path}: {where}.mmproj: a projector is one model's: set model_manager.models.NAME.mmproj")
    if settings.parallel > settings.n_batch:
        raise ConfigError(
            f"{path}: {where}: parallel ({settings.parallel}) is more than n_batch ({settings.n_batch}): each step's "
            "batch of n_batch tokens holds one token of every generating request; raise n_batch or lower parallel"
        )
    if settings.type_v != "f16" and settings.flash_attn is False:
        raise ConfigError(f"{path}: {where}: type_v {settings.type_v} needs flash attention: set flash_attn to auto")


def load_config(path: Path | None = None) -> Config:
    """Read and validate config.json (or the given file); raises ConfigError."""
    path = (path or config_path()).resolve()
    document = _read(path)
    for unknown in sorted(set(document) - set(SCHEMA)):
        logger.warning("%s: unknown section %s is ignored", path, unknown)
    server, manager, records = (_section(path, document, name) for name in SCHEMA)
    for key in ("cors_origins", "allowed_hosts", "peers"):
        server[key] = tuple(server[key])
    server["log_level"] = server["log_level"].upper()
    if server["max_body_bytes"] is None:  # a body that can carry one image of max_image_bytes in base64
        server["max_body_bytes"] = 8 * 1024 * 1024 + (server["max_image_bytes"] + 2) // 3 * 4
    manager["models_directory"] = (path.parent / manager["models_directory"]).resolve()
    cores = cpus.usable_cores()
    manager["n_threads"] = manager["n_threads"] or cores
    manager["n_threads_batch"] = manager["n_threads_batch"] or cores
    if manager["preload"] != AUTO_PRELOAD:
        manager["preload"] = tuple(dict.fromkeys(manager["preload"]))
    models = {
        name: _validated(path, f"model_manager.models.{name}", settings, MODEL_KEYS)
        for name, settings in manager.pop("models").items()
    }
    for where, settings in (("model_manager", manager), *((f"model_manager.models.{n}", s) for n, s in models.items())):
        if "prompt_cache_directory" in settings:
            settings["prompt_cache_directory"] = str((path.parent / settings["prompt_cache_directory"]).resolve())
        if settings.get("chat_template"):
            settings["chat_template"] = _template_text(path, where, settings["chat_template"])
        if settings.get("mmproj"):
            settings["mmproj"] = _projector_file(path, where, settings["mmproj"])
    defaults = ModelSettings(**{key: manager.pop(key) for key in MODEL_KEYS})
    _refuse_impossible(path, "model_manager", defaults)
    for name, settings in models.items():
        _refuse_impossible(path, f"model_manager.models.{name}", replace(defaults, **settings))
    return Config(
        path=path,
        server=ServerConfig(**server),
        model_manager=ModelManagerConfig(**manager, defaults=defaults, models=models),
        records=RecordsConfig(**records),
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
