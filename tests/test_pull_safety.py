"""What a pull never does (the security round of issue 23): show a URL's password or query
values (errors, logs, console rows, socket messages), send a URL's credentials to another
origin, quote the bytes a server sent, fill the disk or pass model_manager.max_pull_mb (whether
or not the server gives a size), or move a file short of its tensor data into place. Against
the local file server of tests/file_server.py, through `manage.py pull`, `pull()` and the
console's pull jobs (in this process)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from channels.layers import get_channel_layer
from django.core.management import CommandError

from inference import pulling
from inference.config import set_config
from inference.pulling import PullError, human_bytes, plan_pull
from inference.pulling.redaction import redacted
from inference.services.pulls import PULL_GROUP, PullJob, PullJobs
from tests.conftest import (
    SMOLLM2,
    SOURCE_NAME,
    files_in,
    free_port,
    pull_command,
    sha256_of,
    write_config,
)
from tests.file_server import FileServer, serving

MIB = 1024 * 1024


@pytest.fixture
def other_files(smollm2_file: Path) -> Iterator[FileServer]:
    """A second server: another origin (the same host, another port) to be redirected to."""
    with serving(smollm2_file) as server:
        yield server


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log line, httpx's request lines included (`manage.py pull` quiets httpx in this process)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="httpx")
    return caplog


def with_credentials(url: str, userinfo: str = "user:s3cret") -> str:
    return url.replace("http://", f"http://{userinfo}@", 1)


def port_of(files: FileServer) -> int:
    return httpx.URL(files.url).port


async def console_pull(url: str, **options: str | None) -> tuple[PullJob, list[dict]]:
    """A pull as the console starts it (in this process), run to its end: the job, and every
    message its progress sent to the staff's sockets."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(PULL_GROUP, channel)
    job = PullJobs().start(url=url, name=options.get("name"), sha256=options.get("sha256"), started_by="staff")
    sent = []
    while not sent or not sent[-1]["finished"]:
        sent.append((await asyncio.wait_for(layer.receive(channel), timeout=60))["pull"])
    return job, sent


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:s3cret@host/m.gguf", "http://user:***@host/m.gguf"),
        ("https://ghp_t0ken@host/m.gguf", "https://***@host/m.gguf"),  # a lone user name is often a token
        ("https://host/m.gguf?X-Amz-Signature=abc&download", "https://host/m.gguf?X-Amz-Signature=***&***"),
        ("https://host/m.gguf#access_token=abc", "https://host/m.gguf"),
        ("ftp://user:s3cret@host/m.gguf?t=1", "ftp://user:***@host/m.gguf?t=***"),
    ],
)
def test_urls_are_shown_without_passwords_or_query_values(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert redacted(httpx.URL(url)) == shown


@pytest.mark.parametrize("url", ["ftp://user:s3cret@host/m.gguf", "hf://user:s3cret@owner/m.gguf"])
def test_a_refused_url_is_quoted_without_its_password(tmp_path: Path, url: str) -> None:
    with pytest.raises(PullError) as refused:
        plan_pull(url=url, directory=tmp_path)
    assert "s3cret" not in str(refused.value) and "user:***@" in str(refused.value)


@pytest.mark.parametrize("same_origin", [True, False], ids=["redirect-same-origin", "redirect-elsewhere"])
@pytest.mark.slow
def test_url_credentials_go_as_basic_auth_to_their_own_origin_only_and_are_never_logged(
    tmp_path: Path, files: FileServer, other_files: FileServer, logged: pytest.LogCaptureFixture, same_origin: bool
) -> None:
    target = files if same_origin else other_files
    url = with_credentials(f"{files.url}/redirect/{port_of(target)}/ok/{SOURCE_NAME}")
    pulling.pull(plan_pull(url=url, directory=tmp_path))

    basic = "Basic " + base64.b64encode(b"user:s3cret").decode()
    first, second = files.seen[0], target.seen[-1]
    assert first.headers["authorization"] == basic
    assert second.path == f"/ok/{SOURCE_NAME}"
    assert second.headers.get("authorization") == (basic if same_origin else None)
    assert f"GET {files.url}/redirect/" in logged.text and "s3cret" not in logged.text
    assert (tmp_path / f"{SMOLLM2}.gguf").is_file()


@pytest.mark.slow
def test_a_redirect_target_s_query_string_is_never_logged_or_shown(
    tmp_path: Path, files: FileServer, other_files: FileServer, logged: pytest.LogCaptureFixture
) -> None:
    signed = f"/ok/{SOURCE_NAME}?X-Amz-Signature=sig0123456789abcdef"
    pulling.pull(plan_pull(url=f"{files.url}/redirect/{port_of(other_files)}{signed}", directory=tmp_path))
    looping = f"{files.url}{f'/redirect/{port_of(files)}' * 12}{signed}"
    with pytest.raises(PullError, match="more than 10 redirects") as refused:
        pulling.pull(plan_pull(url=looping, directory=tmp_path, name="looping"))
    assert other_files.seen[0].path == signed  # the signature went where it was for
    assert "sig0123456789abcdef" not in logged.text + str(refused.value)
    assert "X-Amz-Signature=***" in logged.text


async def test_a_console_pull_shows_its_url_redacted_in_its_row_its_messages_and_the_log(
    models: Path, files: FileServer, logged: pytest.LogCaptureFixture
) -> None:
    url = with_credentials(f"{files.url}/not-gguf/model.gguf?token=t0ken")
    job, sent = await console_pull(url)

    assert job.snapshot()["url"] == f"http://user:***@127.0.0.1:{port_of(files)}/not-gguf/model.gguf?token=***"
    assert job.snapshot()["state"] == "failed"
    seen = json.dumps(sent) + logged.text
    assert "s3cret" not in seen and "t0ken" not in seen
    assert "started by staff" in logged.text and "token=***" in logged.text


@pytest.mark.parametrize(
    ("path", "error"),
    [
        (
            "/redirect/{port}/metrics",
            r"^127\.0\.0\.1/metrics \(HTTP 200, text/plain\) sent something that is not a GGUF "
            r"file \(no GGUF magic\); nothing was kept$",
        ),
        ("/bad-chunks/model.gguf", r"^cannot download from 127\.0\.0\.1 \(illegal chunk header\)$"),
        ("/redirect/oops/model.gguf", r"^cannot download from 127\.0\.0\.1 \(Invalid URL in location header\)$"),
    ],
    ids=["redirected-to-metrics", "broken-chunked-encoding", "redirected-to-an-invalid-url"],
)
def test_errors_describe_what_answered_and_never_quote_it(
    models: Path, files: FileServer, path: str, error: str
) -> None:
    with pytest.raises(CommandError, match=error) as refused:
        pull_command(files.url + path.format(port=port_of(files)), "--name", "model")
    assert "HE" not in str(refused.value) and "secret" not in str(refused.value)
    assert files_in(models) == []


@pytest.mark.parametrize("free", [10**6, 98_362_432 + 500_000_000], ids=["too-little", "not-beside-the-margin"])
def test_a_pull_that_would_not_fit_on_the_disk_does_not_start(
    models: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch, free: int
) -> None:
    monkeypatch.setattr(pulling.download.shutil, "disk_usage", lambda path: SimpleNamespace(free=free))
    with pytest.raises(
        CommandError,
        match=rf"^not enough disk space in {re.escape(str(models))}: {SMOLLM2} needs "
        rf"98\.4 MB more, {human_bytes(free)} are free and a pull leaves 1\.0 GB$",
    ):
        pull_command(f"{files.url}/ok/{SOURCE_NAME}")
    assert files_in(models) == []


def disk_filling_up(monkeypatch: pytest.MonkeyPatch, part: Path, room: int) -> None:
    """The models' disk: 1 GB (what a pull leaves free) and `room` bytes free, less what `part` holds."""

    def disk_usage(path: Path) -> SimpleNamespace:
        return SimpleNamespace(free=1_000_000_000 + room - (part.stat().st_size if part.exists() else 0))

    monkeypatch.setattr(pulling.download.shutil, "disk_usage", disk_usage)


NO_ROOM_AFTER_64_MIB = (
    rf"^not enough disk space in .*: {SMOLLM2} is at 67\.1 MB, of a size the server did not "
    rf"give, 1\.0\d* GB are free and a pull leaves 1\.0 GB; {SMOLLM2}\.gguf\.part is kept: make "
    r"room and pull again to resume$"
)


@pytest.mark.slow
def test_a_download_of_unknown_size_stops_before_the_disk_fills_and_resumes_once_there_is_room(
    models: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch, source_sha256: str
) -> None:
    part = models / f"{SMOLLM2}.gguf.part"
    disk_filling_up(monkeypatch, part, room=70 * MIB)  # room for the first 64 MiB stretch, not the second
    url = f"{files.url}/no-length/{SOURCE_NAME}"
    with pytest.raises(CommandError, match=NO_ROOM_AFTER_64_MIB):
        pull_command(url)
    assert files_in(models) == [part.name] and part.stat().st_size == 64 * MIB

    disk_filling_up(monkeypatch, part, room=200 * MIB)
    assert "resumed at 67.1 MB" in pull_command(url)
    assert sha256_of(models / f"{SMOLLM2}.gguf") == source_sha256


def with_max_pull_mb(models: Path, max_pull_mb: int) -> None:
    write_config(models.parent, server={"port": free_port()}, max_pull_mb=max_pull_mb)
    set_config(None)


@pytest.mark.parametrize(
    ("route", "error"),
    [
        ("ok", rf"^{SMOLLM2} is 98\.4 MB, more than model_manager\.max_pull_mb \(50 MiB\) allows; nothing was kept$"),
        (
            "no-length",
            rf"^{SMOLLM2} grew past model_manager\.max_pull_mb \(50 MiB\) as it arrived \(the server gave no "
            r"size\); the download was removed$",
        ),
    ],
)
def test_a_file_over_max_pull_mb_is_refused_by_its_size_or_as_it_arrives(
    models: Path, files: FileServer, route: str, error: str
) -> None:
    with_max_pull_mb(models, 50)
    with pytest.raises(CommandError, match=error):
        pull_command(f"{files.url}/{route}/{SOURCE_NAME}")
    assert files_in(models) == []


async def test_the_console_row_shows_the_same_one_line_errors(
    models: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_filling_up(monkeypatch, models / f"{SMOLLM2}.gguf.part", room=70 * MIB)
    job, sent = await console_pull(f"{files.url}/no-length/{SOURCE_NAME}")
    assert (job.state.value, sent[-1]["state"]) == ("failed", "failed")
    assert re.match(NO_ROOM_AFTER_64_MIB, sent[-1]["message"])

    with_max_pull_mb(models, 50)
    disk_filling_up(monkeypatch, models / "limited.gguf.part", room=10**12)
    job, sent = await console_pull(f"{files.url}/no-length/{SOURCE_NAME}", name="limited")
    assert sent[-1]["message"] == (
        "limited grew past model_manager.max_pull_mb (50 MiB) as it arrived (the server "
        "gave no size); the download was removed"
    )
    assert files_in(models) == [f"{SMOLLM2}.gguf.part"]  # the first pull's, kept to be resumed


def test_a_file_short_of_its_tensor_data_at_the_size_the_server_gave_is_refused_and_removed(
    models: Path, files: FileServer
) -> None:
    with pytest.raises(
        CommandError,
        match=r"^127\.0\.0\.1/half/.* \(HTTP 200, application/octet-stream\) sent a GGUF "
        r"file short of its tensor data \(49\.2 MB of the 98\.4 MB its GGUF header "
        r"describes\); nothing was kept$",
    ):
        pull_command(f"{files.url}/half/{SOURCE_NAME}")
    assert files_in(models) == []


@pytest.mark.slow
def test_a_body_of_unknown_size_that_ends_short_of_its_tensor_data_is_kept_and_resumed(
    models: Path, files: FileServer, source_sha256: str
) -> None:
    url = f"{files.url}/no-length+cut-once/{SOURCE_NAME}"
    with pytest.raises(
        CommandError,
        match=rf"^the download of {SMOLLM2} ended at 49\.2 MB of the 98\.4 MB its GGUF "
        r"header describes, and the server gave no size: .* is kept: pull again",
    ):
        pull_command(url)
    assert files_in(models) == [f"{SMOLLM2}.gguf.part"]

    assert "resumed at 49.2 MB" in pull_command(url)
    assert sha256_of(models / f"{SMOLLM2}.gguf") == source_sha256
