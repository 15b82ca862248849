"""Faults on a real server: model files and the models directory vanishing at runtime, a model
too large for max_memory_mb, kill -9 in the middle of traffic. (Broken .gguf files: test_errors
and test_lifecycle; an invalid config.json on reload: test_lifecycle; port in use: test_serve;
SIGTERM during a stream: test_lifecycle.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    HI,
    SMOLLM2,
    DaphneServer,
    ServerFactory,
    free_port,
    link_model,
    start_server,
    wait_for,
    write_config,
)
from tests.database_servers import DatabaseTemplate


def model_ids(server: DaphneServer) -> list[str]:
    return [model["id"] for model in httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]]


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with server_factory("faults", names=(), n_ctx=512, idle_timeout=-1, check_interval=0.2) as server:
        yield server


@pytest.fixture
def models(server: DaphneServer, smollm2_file: Path) -> Iterator[Path]:
    """The server's models directory holding SmolLM2 and "f-other"; put back afterwards."""
    directory = server.config.parent / "models"
    for name in (SMOLLM2, "f-other"):
        if not (directory / f"{name}.gguf").exists():
            link_model(smollm2_file, directory, name)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
    for name in (SMOLLM2, "f-other"):
        link_model(smollm2_file, directory, name)


def test_a_model_file_deleted_while_loaded_is_unloaded_and_gone(server: DaphneServer, models: Path) -> None:
    assert server.chat("f-other").status_code == 200
    assert "f-other" in server.loaded()
    (models / "f-other.gguf").unlink()

    refused = server.chat("f-other")
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    assert "f-other" not in model_ids(server)
    wait_for(lambda: "f-other" not in server.loaded())  # the reaper noticed and freed its memory

    def last_event() -> list[tuple]:
        query = "SELECT kind, reason FROM inference_loadevent WHERE model = 'f-other' ORDER BY id DESC LIMIT 1"
        return server.rows(query)

    # The unload is recorded by the worker as it finishes, just after the model leaves the list.
    wait_for(lambda: last_event() == [("unload", "file_removed")])
    assert server.chat(SMOLLM2).status_code == 200


def test_a_model_file_deleted_while_unloaded_is_a_404(server: DaphneServer, models: Path) -> None:
    assert "f-other" in model_ids(server)
    (models / "f-other.gguf").unlink()
    error = server.chat("f-other").json()["error"]
    assert error["code"] == "model_not_found"
    assert f"Available models: {SMOLLM2}." in error["message"]


def test_the_models_directory_removed_at_runtime(server: DaphneServer, models: Path) -> None:
    assert server.chat(SMOLLM2).status_code == 200
    missing = f"models directory {models} does not exist"
    logged_before = server.log().count(missing)
    moved = models.with_name("models-away")
    models.rename(moved)
    try:
        refused = server.chat(SMOLLM2)
        assert refused.status_code == 404
        assert f"the models directory {models} does not exist" in refused.json()["error"]["message"]
        assert model_ids(server) == []
        assert httpx.get(f"{server.url}/health").status_code == 200
        wait_for(lambda: server.loaded() == [])
    finally:
        moved.rename(models)
    assert server.chat(SMOLLM2).status_code == 200  # served again as soon as it is back
    assert server.log().count(missing) == logged_before + 1  # once, not per request
    assert f"models directory {models} is back" in server.log()


@pytest.mark.server
def test_a_model_that_would_not_fit_is_refused_before_loading(
    tmp_path: Path, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> None:
    link_model(smollm2_file, tmp_path / "models", SMOLLM2)
    config = write_config(tmp_path, n_ctx=4096, max_memory_mb=100)
    server = start_server(config, tmp_path / "server.log", migrated_database, "--port", str(free_port()))
    try:
        refused = server.chat(SMOLLM2)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "model_too_large" and error["type"] == "server_error"
        assert "would need about" in error["message"] and "max_memory_mb is 100" in error["message"]
        assert server.loaded() == []
        assert server.rows("SELECT count(*) FROM inference_loadevent WHERE kind = 'load'") == [(0,)]
        assert server.process.poll() is None
    finally:
        server.stop()


@pytest.mark.server
def test_kill_9_loses_no_finished_request(
    tmp_path: Path, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> None:
    """Clients stream and wait for answers while the server is killed: every completion a
    client saw finish is in the database after a restart, once."""
    link_model(smollm2_file, tmp_path / "models", SMOLLM2)
    config = write_config(tmp_path, n_ctx=2048)
    port = str(free_port())
    server = start_server(config, tmp_path / "server.log", migrated_database, "--port", port)
    finished: list[str] = []
    killed = threading.Event()

    def client(stream: bool) -> None:
        body = {"model": SMOLLM2, "messages": HI, "max_tokens": 24, "stream": stream}
        while not killed.is_set():
            try:
                with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
                    if not stream:
                        finished.append(json.loads(response.read())["id"])
                        continue
                    for line in response.iter_lines():
                        chunk = json.loads(line[6:]) if line.startswith("data: {") else None
                        if chunk and chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                            finished.append(chunk["id"])  # its record is committed before this chunk
            except (httpx.TransportError, json.JSONDecodeError):
                return

    clients = [threading.Thread(target=client, args=(index % 2 == 0,)) for index in range(6)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: len(finished) >= 30, seconds=180)  # ~5 s on an idle 2-core machine
    finally:
        os.kill(server.process.pid, signal.SIGKILL)
        killed.set()
        server.process.wait(timeout=10)
        for thread in clients:
            thread.join(timeout=30)

    restarted = start_server(config, tmp_path / "server.log", server.database_url, "--port", port)
    try:
        recorded = [row[0] for row in restarted.rows("SELECT completion_id FROM inference_requestrecord")]
        assert set(finished) <= set(recorded), set(finished) - set(recorded)
        assert len(recorded) == len(set(recorded))
        assert restarted.chat(SMOLLM2).status_code == 200
        wait_for(lambda: len(restarted.rows("SELECT id FROM inference_requestrecord")) == len(recorded) + 1)
    finally:
        restarted.stop()


@pytest.mark.server
def test_a_full_queue_is_a_503_with_retry_after(
    tmp_path: Path, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> None:
    link_model(smollm2_file, tmp_path / "models", SMOLLM2)
    config = write_config(tmp_path, n_ctx=1024, parallel=1, max_queue=1)
    server = start_server(config, tmp_path / "server.log", migrated_database, "--port", str(free_port()))
    try:
        long = {"model": SMOLLM2, "messages": HI, "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=long, timeout=60) as running:
            lines = running.iter_lines()  # kept: closing it would hang up, which cancels the generation
            next(line for line in lines if line.startswith("data: "))  # it holds the one slot
            queued = threading.Thread(target=server.chat, args=(SMOLLM2,))
            queued.start()
            wait_for(lambda: httpx.get(f"{server.url}/health").json()["models"][SMOLLM2]["queued"] == 1)
            refused = server.chat(SMOLLM2)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "queue_full"
            assert int(refused.headers["Retry-After"]) >= 1
        queued.join(timeout=60)
        assert server.chat(SMOLLM2).status_code == 200  # room again
    finally:
        server.stop()
