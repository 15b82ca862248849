"""Secret files (the admin token, Django's secret key): written whole and owner-only; a file that
holds no secret never matches anything and gets a new one."""

from __future__ import annotations

import logging
import stat
import threading
from pathlib import Path

import pytest
from django.test import AsyncClient

from inference.api.authentication import ADMIN_TOKEN_ENV_VAR, admin_token
from inference.secret_files import read_or_create_secret


@pytest.mark.parametrize("content", ["", "  \n"])
@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer   ", "bearer \t"])
async def test_an_empty_admin_token_file_never_opens_the_admin_endpoints(
    use_config, tmp_path: Path, content: str, header: str
) -> None:
    """An empty .admin_token (an operator's `touch`) let `Authorization: Bearer` unload models."""
    token_file = tmp_path / ".admin_token"
    token_file.write_text(content)
    client = AsyncClient()
    refused = await client.post(
        "/admin/unload", {"model": "all"}, content_type="application/json", headers={"Authorization": header}
    )
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    token = token_file.read_text()
    assert len(token) > 40 and token == token.strip()  # a new one, in place of nothing
    allowed = await client.post(
        "/admin/unload", {"model": "all"}, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )
    assert allowed.status_code == 200


def test_a_secret_is_written_whole_and_readable_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / ".secret_key"
    secret = read_or_create_secret(path)
    assert len(secret) > 40 and path.read_text() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in tmp_path.iterdir()] == [".secret_key"]  # no temporary file left
    assert read_or_create_secret(path) == secret


def test_an_empty_secret_file_gets_a_new_secret_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / ".admin_token"
    path.touch(mode=0o644)
    with caplog.at_level(logging.WARNING, logger="inference.secret_files"):
        secret = read_or_create_secret(path)
    assert secret and path.read_text() == secret and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [record.getMessage() for record in caplog.records] == [
        f"{path} held no secret (it was empty): a new one was written to it"
    ]


def test_processes_starting_together_keep_one_secret(tmp_path: Path) -> None:
    path, found = tmp_path / ".secret_key", []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        found.append(read_or_create_secret(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and path.read_text() == found[0]
    assert [entry.name for entry in tmp_path.iterdir()] == [".secret_key"]


def test_a_blank_admin_token_in_the_environment_is_no_token(
    use_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV_VAR, "   ")
    assert admin_token(create=False) is None
    token = admin_token(create=True)
    assert token and token == (tmp_path / ".admin_token").read_text()
