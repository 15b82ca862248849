"""config.json: defaults, validation with one-line messages, path resolution."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from inference.config import CONFIG_ENV_VAR, ConfigError, config_path, load_config
from inference.cpus import usable_cores
from inference.runtime.settings import LoadSettings

PROJECT_DIR = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_missing_keys_take_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {}))
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.server.cors_origins == ("*",)
    assert config.server.log_level == "INFO"
    assert config.server.instance == "127.0.0.1:8080"
    manager = config.model_manager
    assert manager.models_directory == (tmp_path / "models").resolve()
    assert manager.default_model == ""
    assert (manager.check_interval, manager.max_loaded_models, manager.shutdown_grace_seconds) == (60, 2, 30)
    assert manager.models == {}
    assert manager.max_pull_mb == 102400  # 100 GiB
    defaults = manager.defaults
    assert (defaults.n_ctx, defaults.n_gpu_layers, defaults.n_batch) == (16384, -1, 512)
    assert defaults.n_threads == defaults.n_threads_batch == usable_cores()
    assert (defaults.idle_timeout, defaults.pinned, defaults.chat_format) == (300, False, "")
    assert (defaults.flash_attn, defaults.use_mmap, defaults.use_mlock) == ("auto", True, False)
    assert (defaults.parallel, defaults.speculative) == (4, "ngram")
    assert manager.settings_for("any-model") == defaults


def test_per_model_settings_override_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "model_manager": {
                "n_ctx": 2048,
                "idle_timeout": 60,
                "models": {
                    "big": {
                        "n_ctx": 4096,
                        "n_gpu_layers": 0,
                        "pinned": True,
                        "chat_format": "chatml",
                        "speculative": "off",
                    }
                },
            }
        },
    )
    manager = load_config(path).model_manager
    big = manager.settings_for("big")
    assert (big.n_ctx, big.n_gpu_layers, big.pinned, big.chat_format, big.idle_timeout) == (4096, 0, True, "chatml", 60)
    assert big.speculative == "off" and manager.settings_for("other").speculative == "ngram"
    assert LoadSettings.of(big, trained_context=None, embedding=False).speculative == "off"
    other = manager.settings_for("other")
    assert (other.n_ctx, other.pinned) == (2048, False)
    assert manager.settings_for("big", {"idle_timeout": 5}).idle_timeout == 5


def test_missing_file_means_defaults_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        config = load_config(tmp_path / "absent.json")
    assert config.server.port == 8080
    assert "not found" in caplog.text


def test_relative_models_directory_is_resolved_against_the_config_folder(tmp_path: Path) -> None:
    path = write(tmp_path, {"model_manager": {"models_directory": "../shared-models"}})
    assert load_config(path).model_manager.models_directory == (tmp_path.parent / "shared-models").resolve()


def test_path_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    assert config_path() == PROJECT_DIR / "config.json"
    path = write(tmp_path, {"server": {"port": 9001}})
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    assert load_config().server.port == 9001


def test_unknown_keys_are_warned_about_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(
        tmp_path,
        {"server": {"port": 8081, "colour": "blue"}, "extras": {}, "model_manager": {"models": {"m": {"speed": 1}}}},
    )
    with caplog.at_level(logging.WARNING):
        assert load_config(path).server.port == 8081
    assert "server.colour" in caplog.text and "extras" in caplog.text
    assert "model_manager.models.m.speed" in caplog.text


def test_json_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "server": {\n    "port": 80,,\n  }\n}')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "line 3, column 16" in message and "\n" not in message


@pytest.mark.parametrize(
    ("server", "body_bytes"),
    [
        ({}, 8 * 1024 * 1024 + 27_962_028),  # 20 MiB of image is 27,962,028 bytes of base64
        ({"max_body_bytes": None}, 8 * 1024 * 1024 + 27_962_028),
        ({"max_image_bytes": 3 * 1024 * 1024}, 12 * 1024 * 1024),
        ({"max_body_bytes": 4096}, 4096),  # given: as given, whatever the images
    ],
)
def test_the_body_limit_holds_the_text_and_one_largest_image_in_base64_unless_given(
    tmp_path: Path, server: dict, body_bytes: int
) -> None:
    config = load_config(write(tmp_path, {"server": server}))
    assert config.server.max_body_bytes == body_bytes
    assert (config.server.fetch_image_urls, config.server.image_fetch_timeout) == (False, 10)


@pytest.mark.parametrize(
    ("document", "key", "problem"),
    [
        ({"server": {"port": "8080"}}, "server.port", "must be an integer"),
        ({"server": {"port": 70000}}, "server.port", "≤ 65535"),
        ({"server": {"port": True}}, "server.port", "must be an integer"),
        ({"server": {"log_level": "LOUD"}}, "server.log_level", "must be one of"),
        ({"server": {"cors_origins": "*"}}, "server.cors_origins", "list of strings"),
        ({"server": {"cors_origins": ["localhost"]}}, "server.cors_origins", "not '*' or an origin"),
        ({"model_manager": {"n_ctx": -5}}, "model_manager.n_ctx", "≥ 0"),
        ({"model_manager": {"n_gpu_layers": 1.5}}, "model_manager.n_gpu_layers", "integer"),
        ({"model_manager": {"idle_timeout": -2}}, "model_manager.idle_timeout", "≥ -1"),
        ({"model_manager": {"check_interval": 0}}, "model_manager.check_interval", "> 0"),
        ({"model_manager": {"models_directory": 3}}, "model_manager.models_directory", "string"),
        ({"model_manager": []}, "model_manager", "JSON object"),
        ({"model_manager": {"max_loaded_models": 0}}, "model_manager.max_loaded_models", "≥ 1"),
        ({"model_manager": {"shutdown_grace_seconds": -1}}, "model_manager.shutdown_grace_seconds", "≥ 0"),
        ({"model_manager": {"pinned": "yes"}}, "model_manager.pinned", "true or false"),
        ({"model_manager": {"flash_attn": "yes"}}, "model_manager.flash_attn", '"auto"'),
        ({"model_manager": {"parallel": 0}}, "model_manager.parallel", "≥ 1"),
        ({"model_manager": {"max_pull_mb": -1}}, "model_manager.max_pull_mb", "≥ 0"),
        ({"model_manager": {"max_pull_mb": "10GB"}}, "model_manager.max_pull_mb", "must be an integer"),
        ({"model_manager": {"models": []}}, "model_manager.models", "object of"),
        ({"model_manager": {"models": {"m": {"n_ctx": "big"}}}}, "model_manager.models.m.n_ctx", "integer"),
        ({"model_manager": {"models": {"m": {"pinned": 1}}}}, "model_manager.models.m.pinned", "true or false"),
        ({"model_manager": {"speculative": "eagle"}}, "model_manager.speculative", 'must be "ngram" or "off"'),
        ({"model_manager": {"models": {"m": {"speculative": False}}}}, "model_manager.models.m.speculative", '"off"'),
        ({"server": {"instance_name": 5}}, "server.instance_name", "string"),
        ({"model_manager": {"aliases": {"gpt-4o": 1}}}, "model_manager.aliases", "{alias: model name}"),
        ({"model_manager": {"aliases": ["gpt-4o"]}}, "model_manager.aliases", "{alias: model name}"),
        ({"server": {"peers": ["127.0.0.1:8081"]}}, "server.peers", "base URL"),
        ({"server": {"peers": "http://127.0.0.1:8081"}}, "server.peers", "list of URLs"),
        ({"server": {"max_body_bytes": 100}}, "server.max_body_bytes", "≥ 1024"),
        ({"server": {"image_fetch_timeout": 0}}, "server.image_fetch_timeout", "> 0"),
        ({"server": {"fetch_image_urls": "yes"}}, "server.fetch_image_urls", "true or false"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(tmp_path: Path, document: dict, key: str, problem: str) -> None:
    path = write(tmp_path, document)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}: {key}: " in str(error.value)
    assert problem in str(error.value)


@pytest.mark.parametrize(
    ("manager", "where"),
    [
        ({"parallel": 8, "n_batch": 4}, "model_manager"),
        ({"n_batch": 4, "models": {"wide": {"parallel": 8}}}, "model_manager.models.wide"),
        ({"parallel": 8, "models": {"narrow": {"n_batch": 4}}}, "model_manager.models.narrow"),
    ],
)
def test_parallel_beyond_n_batch_is_refused(tmp_path: Path, manager: dict, where: str) -> None:
    """Each generating request adds a token to every step's batch: more requests than the batch
    holds crashed the process."""
    path = write(tmp_path, {"model_manager": manager})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {where}: parallel (8) is more than n_batch (4)") and "\n" not in message


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a JSON object"):
        load_config(write(tmp_path, "[1, 2]"))


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, {"server": {"log_level": "debug"}})).server.log_level == "DEBUG"


def test_shipped_config_is_valid_and_names_the_bundled_model() -> None:
    config = load_config(PROJECT_DIR / "config.json")
    assert config.model_manager.default_model == "SmolLM2-135M-Instruct.Q4_1"
