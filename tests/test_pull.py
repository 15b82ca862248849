"""Pulling models: `manage.py pull` against a local HTTP server that serves the real SmolLM2 file
(a full pull the running server then lists, a connection cut half-way and resumed, a server
that ignores Range, a wrong checksum, a body that is not GGUF or short of its tensor data, a
full disk, a body of unknown size that would fill it, a file over max_pull_mb), hf:// URLs and
where HF_TOKEN and a URL's own credentials go, that passwords and query values are never shown
nor remote bytes quoted, the names a pull accepts; and the console's pull page, in Chromium."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from channels.layers import get_channel_layer
from django.core.management import CommandError, call_command
from django.core.management.base import OutputWrapper
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from inference import pulling
from inference.config import CONFIG_ENV_VAR, set_config
from inference.management.progress import TerminalProgress
from inference.pull_jobs import PULL_GROUP, PullJob, PullJobs
from inference.pulling import (
    PullCancelled,
    PullError,
    PullPhase,
    PullProgress,
    download_url,
    human_bytes,
    model_name,
    plan_pull,
    token_for,
)
from inference.pulling.redaction import redacted
from inference.runtime.catalog import scan
from tests.browser import STAFF_PASSWORD, chromium, console_server, log_in, needs_chromium, screenshot
from tests.conftest import (
    PROJECT_DIR,
    SMOLLM2,
    DaphneServer,
    free_port,
    link_model,
    wait_for,
    write_config,
)
from tests.file_server import FileServer
from tests.gguf_files import write_synthetic
from tests.services import DatabaseTemplate

SOURCE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def source_sha256(smollm2_file: Path) -> str:
    return hashlib.sha256(smollm2_file.read_bytes()).hexdigest()


@pytest.fixture
def files(smollm2_file: Path) -> Iterator[FileServer]:
    server = FileServer(smollm2_file).start()
    yield server
    server.stop()


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The models directory of a config.json whose server is not running."""
    config = write_config(tmp_path, server={"port": free_port()})
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    set_config(None)
    yield tmp_path / "models"
    set_config(None)


def pull_command(*args: str) -> str:
    """`manage.py pull ARGS` in this process; its stdout (a CommandError is raised through)."""
    out = StringIO()
    call_command("pull", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def other_files(smollm2_file: Path) -> Iterator[FileServer]:
    """A second server: another origin (the same host, another port) to be redirected to."""
    server = FileServer(smollm2_file).start()
    yield server
    server.stop()


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path,
           migrated_database: DatabaseTemplate) -> Iterator[DaphneServer]:
    with console_server(tmp_path_factory.mktemp("pull"), smollm2_file, migrated_database) as server:
        yield server


def listed(server: DaphneServer) -> list[str]:
    return [model["id"] for model in httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]]


def test_a_pull_is_verified_moved_into_place_and_listed_by_the_running_server(
    server: DaphneServer, files: FileServer, source_sha256: str
) -> None:
    result = server.manage("pull", f"{files.url}/ok/{SOURCE_NAME}", "--name", "pulled-cli", "--sha256", source_sha256)

    assert result.returncode == 0, result.stderr
    assert "sha256 verified" in result.stdout and "the running server now lists pulled-cli" in result.stdout
    models = server.config.parent / "models"
    assert sha256_of(models / "pulled-cli.gguf") == source_sha256
    assert not (models / "pulled-cli.gguf.part").exists()
    assert "pulled-cli" in listed(server)
    assert server.chat("pulled-cli").status_code == 200


def test_without_a_running_server_the_model_is_listed_at_its_next_start(models: Path, files: FileServer) -> None:
    output = pull_command(f"{files.url}/ok/{SOURCE_NAME}")

    assert (models / f"{SOURCE_NAME}").is_file()
    assert f"{SMOLLM2} will be listed when the server starts" in output


def test_a_pull_cut_half_way_resumes_with_a_range_request(models: Path, files: FileServer, source_sha256: str,
                                                          smollm2_file: Path) -> None:
    url = f"{files.url}/cut-once/{SOURCE_NAME}"
    with pytest.raises(CommandError, match="broke off.*pull again to resume"):
        pull_command(url)
    part = models / f"{SMOLLM2}.gguf.part"
    kept = part.stat().st_size
    assert 0 < kept < smollm2_file.stat().st_size
    assert files_in(models) == [part.name]  # nothing that looks like a model

    output = pull_command(url)

    assert files.seen[-1].headers["range"] == f"bytes={kept}-"
    assert files.seen[-1].headers["if-range"] == files.etag
    assert "resumed at" in output
    assert sha256_of(models / f"{SMOLLM2}.gguf") == source_sha256
    assert files_in(models) == [f"{SMOLLM2}.gguf"]


def test_a_file_replaced_since_the_cut_is_downloaded_again_whole(models: Path, files: FileServer,
                                                                 source_sha256: str) -> None:
    url = f"{files.url}/cut-once/{SOURCE_NAME}"
    with pytest.raises(CommandError, match="broke off"):
        pull_command(url)
    files.etag = '"v2"'

    output = pull_command(url)

    assert files.seen[-1].headers["if-range"] == '"v1"'  # the version the kept bytes came from
    assert "resumed" not in output
    assert sha256_of(models / f"{SMOLLM2}.gguf") == source_sha256


def test_a_server_that_ignores_range_starts_the_download_over(models: Path, files: FileServer, source_sha256: str,
                                                              smollm2_file: Path) -> None:
    models.mkdir()
    (models / "restarted.gguf.part").write_bytes(smollm2_file.read_bytes()[: 10_000_000])

    pull_command(f"{files.url}/no-range/{SOURCE_NAME}", "--name", "restarted", "--sha256", source_sha256)

    assert files.seen[-1].headers["range"] == "bytes=10000000-"  # asked, and got the whole file
    assert sha256_of(models / "restarted.gguf") == source_sha256
    assert files_in(models) == ["restarted.gguf"]


def test_a_wrong_checksum_fails_in_one_line_and_keeps_nothing(models: Path, files: FileServer) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "pull", f"{files.url}/ok/{SOURCE_NAME}", "--sha256", "0" * 64],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0] == result.stderr.splitlines()[-1], result.stderr
    assert errors[0].startswith("CommandError: sha256 mismatch: expected 0000")
    assert files_in(models) == []


def test_a_body_that_is_not_gguf_is_refused_and_removed(models: Path, files: FileServer) -> None:
    with pytest.raises(CommandError, match="is not a GGUF file"):
        pull_command(f"{files.url}/not-gguf/model.gguf")
    assert files_in(models) == []


def test_a_file_short_of_its_tensor_data_at_the_size_the_server_gave_is_refused_and_removed(
    models: Path, files: FileServer
) -> None:
    with pytest.raises(CommandError, match=r"^127\.0\.0\.1/half/.* \(HTTP 200, application/octet-stream\) sent a GGUF "
                                           r"file short of its tensor data \(49\.2 MB of the 98\.4 MB its GGUF header "
                                           r"describes\); nothing was kept$"):
        pull_command(f"{files.url}/half/{SOURCE_NAME}")
    assert files_in(models) == []


def test_a_body_of_unknown_size_that_ends_short_of_its_tensor_data_is_kept_and_resumed(
    models: Path, files: FileServer, source_sha256: str
) -> None:
    url = f"{files.url}/no-length+cut-once/{SOURCE_NAME}"
    with pytest.raises(CommandError, match=rf"^the download of {SMOLLM2} ended at 49\.2 MB of the 98\.4 MB its GGUF "
                                           r"header describes, and the server gave no size: .* is kept: pull again"):
        pull_command(url)
    assert files_in(models) == [f"{SMOLLM2}.gguf.part"]

    assert "resumed at 49.2 MB" in pull_command(url)
    assert sha256_of(models / f"{SMOLLM2}.gguf") == source_sha256


@pytest.mark.parametrize(("path", "error"), [
    ("/redirect/{port}/metrics", r"^127\.0\.0\.1/metrics \(HTTP 200, text/plain\) sent something that is not a GGUF "
                                 r"file \(no GGUF magic\); nothing was kept$"),
    ("/bad-chunks/model.gguf", r"^cannot download from 127\.0\.0\.1 \(illegal chunk header\)$"),
    ("/redirect/oops/model.gguf", r"^cannot download from 127\.0\.0\.1 \(Invalid URL in location header\)$"),
], ids=["redirected-to-metrics", "broken-chunked-encoding", "redirected-to-an-invalid-url"])
def test_errors_describe_what_answered_and_never_quote_it(models: Path, files: FileServer, path: str,
                                                        error: str) -> None:
    with pytest.raises(CommandError, match=error) as refused:
        pull_command(files.url + path.format(port=port_of(files)), "--name", "model")
    assert "HE" not in str(refused.value) and "secret" not in str(refused.value)
    assert files_in(models) == []


@pytest.mark.parametrize("free", [10**6, 98_362_432 + 500_000_000], ids=["too-little", "not-beside-the-margin"])
def test_a_pull_that_would_not_fit_on_the_disk_does_not_start(
    models: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch, free: int
) -> None:
    monkeypatch.setattr(pulling.download.shutil, "disk_usage", lambda path: SimpleNamespace(free=free))
    with pytest.raises(CommandError, match=rf"^not enough disk space in {re.escape(str(models))}: {SMOLLM2} needs "
                                           rf"98\.4 MB more, {human_bytes(free)} are free and a pull leaves 1\.0 GB$"):
        pull_command(f"{files.url}/ok/{SOURCE_NAME}")
    assert files_in(models) == []


def disk_filling_up(monkeypatch: pytest.MonkeyPatch, part: Path, room: int) -> None:
    """The models' disk: 1 GB (what a pull leaves free) and `room` bytes free, less what `part` holds."""
    def disk_usage(path: Path) -> SimpleNamespace:
        return SimpleNamespace(free=1_000_000_000 + room - (part.stat().st_size if part.exists() else 0))

    monkeypatch.setattr(pulling.download.shutil, "disk_usage", disk_usage)


MIB = 1024 * 1024
NO_ROOM_AFTER_64_MIB = (rf"^not enough disk space in .*: {SMOLLM2} is at 67\.1 MB, of a size the server did not "
                        rf"give, 1\.0\d* GB are free and a pull leaves 1\.0 GB; {SMOLLM2}\.gguf\.part is kept: make "
                        r"room and pull again to resume$")


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


@pytest.mark.parametrize(("route", "error"), [
    ("ok", rf"^{SMOLLM2} is 98\.4 MB, more than model_manager\.max_pull_mb \(50 MiB\) allows; nothing was kept$"),
    ("no-length", rf"^{SMOLLM2} grew past model_manager\.max_pull_mb \(50 MiB\) as it arrived \(the server gave no "
                  r"size\); the download was removed$"),
])
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
    assert sent[-1]["message"] == ("limited grew past model_manager.max_pull_mb (50 MiB) as it arrived (the server "
                                   "gave no size); the download was removed")
    assert files_in(models) == [f"{SMOLLM2}.gguf.part"]  # the first pull's, kept to be resumed


def test_a_second_pull_of_the_same_name_waits_its_turn_and_a_cancel_leaves_nothing(
    tmp_path: Path, files: FileServer
) -> None:
    plan = plan_pull(url=f"{files.url}/slow/{SOURCE_NAME}", directory=tmp_path, name="slow")
    cancel, outcome = threading.Event(), []

    def first() -> None:
        try:
            pulling.pull(plan, cancel=cancel)
        except PullError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    wait_for(lambda: plan.part.exists() and plan.part.stat().st_size > 0)
    with pytest.raises(PullError, match="another pull of slow is under way"):
        pulling.pull(plan)
    assert plan.part.stat().st_size > 0  # the refused pull left the first one's bytes alone

    cancel.set()
    thread.join(timeout=60)
    assert isinstance(outcome[0], PullCancelled)
    assert files_in(tmp_path) == []


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_the_terminal_shows_a_bar_with_bytes_rate_and_eta_and_a_log_gets_plain_lines() -> None:
    halfway = PullProgress(phase=PullPhase.DOWNLOADING, received=49_000_000, total=98_000_000, resumed_from=0,
                           bytes_per_second=12_250_000)
    terminal = Terminal()
    TerminalProgress(OutputWrapper(terminal), "smol")(halfway)
    assert terminal.getvalue() == (
        "\r\033[Ksmol [###############...............]  50%  49.0 MB / 98.0 MB  12.2 MB/s  ETA 0:04"
    )

    log = StringIO()
    progress = TerminalProgress(OutputWrapper(log), "smol")
    for _ in range(3):
        progress(halfway)
    assert log.getvalue() == "smol: downloading 49.0 MB / 98.0 MB  12.2 MB/s  ETA 0:04\n"  # one per 5 s


@pytest.mark.parametrize(("url", "expected"), [
    ("hf://owner/repo/model.Q4_K_M.gguf", "https://huggingface.co/owner/repo/resolve/main/model.Q4_K_M.gguf"),
    ("hf://owner/repo/path/to/file.gguf", "https://huggingface.co/owner/repo/resolve/main/path/to/file.gguf"),
    ("hf://owner/repo@v1.0/file.gguf", "https://huggingface.co/owner/repo/resolve/v1.0/file.gguf"),
    ("https://example.com/m.gguf", "https://example.com/m.gguf"),
])
def test_hf_urls_are_hugging_face_resolve_urls(url: str, expected: str) -> None:
    assert download_url(url) == expected
    assert model_name(download_url(url)) == Path(expected).stem


@pytest.mark.parametrize("url", ["hf://owner/file.gguf", "hf://owner/repo/", "ftp://example.com/m.gguf", "m.gguf"])
def test_urls_that_name_no_file_are_refused(url: str) -> None:
    with pytest.raises(PullError):
        download_url(url)


def test_hf_token_goes_to_hugging_face_over_https_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    for url in ("https://huggingface.co/o/r/resolve/main/f.gguf", "https://cdn-lfs.huggingface.co/x",
                "https://hf.co/o/r/resolve/main/f.gguf"):
        assert token_for(httpx.URL(url)) == "hf_secret", url
    for url in ("http://huggingface.co/o/r/f.gguf", "https://huggingface.co.evil.example/f.gguf",
                "https://nothuggingface.co/f.gguf", "https://example.com/f.gguf"):
        assert token_for(httpx.URL(url)) is None, url
    monkeypatch.delenv("HF_TOKEN")
    assert token_for(httpx.URL("https://huggingface.co/o/r/f.gguf")) is None


def test_a_redirect_elsewhere_does_not_carry_the_token(
    tmp_path: Path, smollm2_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hugging_face, elsewhere = FileServer(smollm2_file).start(), FileServer(smollm2_file).start()
    try:
        port = httpx.URL(hugging_face.url).port
        monkeypatch.setattr(pulling.remote, "token_for", lambda url: "hf_secret" if url.port == port else None)
        elsewhere_port = httpx.URL(elsewhere.url).port
        plan = plan_pull(url=f"{hugging_face.url}/redirect/{elsewhere_port}/ok/{SOURCE_NAME}", directory=tmp_path)
        pulling.pull(plan)
    finally:
        hugging_face.stop()
        elsewhere.stop()
    assert hugging_face.seen[0].headers["authorization"] == "Bearer hf_secret"
    assert [seen.path for seen in elsewhere.seen] == [f"/ok/{SOURCE_NAME}"]
    assert "authorization" not in elsewhere.seen[0].headers
    assert (tmp_path / f"{SMOLLM2}.gguf").is_file()


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:s3cret@host/m.gguf", "http://user:***@host/m.gguf"),
    ("https://ghp_t0ken@host/m.gguf", "https://***@host/m.gguf"),  # a lone user name is often a token
    ("https://host/m.gguf?X-Amz-Signature=abc&download", "https://host/m.gguf?X-Amz-Signature=***&***"),
    ("https://host/m.gguf#access_token=abc", "https://host/m.gguf"),
    ("ftp://user:s3cret@host/m.gguf?t=1", "ftp://user:***@host/m.gguf?t=***"),
])
def test_urls_are_shown_without_passwords_or_query_values(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert redacted(httpx.URL(url)) == shown


@pytest.mark.parametrize("url", ["ftp://user:s3cret@host/m.gguf", "hf://user:s3cret@owner/m.gguf"])
def test_a_refused_url_is_quoted_without_its_password(tmp_path: Path, url: str) -> None:
    with pytest.raises(PullError) as refused:
        plan_pull(url=url, directory=tmp_path)
    assert "s3cret" not in str(refused.value) and "user:***@" in str(refused.value)


@pytest.mark.parametrize("same_origin", [True, False], ids=["redirect-same-origin", "redirect-elsewhere"])
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


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", ".hidden", "mmproj-vision", "big-00001-of-00002",
                                  " ", "tab\tname", "x" * 201])
def test_names_that_would_not_be_listed_as_themselves_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(PullError, match="name"):
        plan_pull(url="https://example.com/m.gguf", directory=tmp_path, name=name)


def test_an_existing_model_is_never_overwritten(models: Path, files: FileServer, smollm2_file: Path) -> None:
    link_model(smollm2_file, models, "taken")
    with pytest.raises(CommandError, match="a model named taken already exists"):
        pull_command(f"{files.url}/ok/{SOURCE_NAME}", "--name", "taken")
    assert files.seen == []


def test_discovery_never_lists_a_download_in_progress(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "done.gguf", context_length=1024)
    write_synthetic(tmp_path / "half.gguf.part", context_length=1024)
    assert list(scan(tmp_path).models) == ["done"]


@contextmanager
def staff_client(server: DaphneServer) -> Iterator[httpx.Client]:
    """An HTTP client logged in as the staff account."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        login = client.get("/admin/login/")
        client.post("/admin/login/", data={"username": "admin", "password": STAFF_PASSWORD,
                                           "csrfmiddlewaretoken": csrf_token(login.text)})
        yield client


def csrf_token(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)[1]


def test_the_pull_page_is_for_staff_and_its_form_needs_the_csrf_token(server: DaphneServer) -> None:
    anonymous = httpx.get(f"{server.url}/dashboard/pull/", timeout=30)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous.headers["location"]

    with staff_client(server) as client:
        page = client.get("/dashboard/pull/")
        assert page.status_code == 200 and 'aria-current="page">Pull models' in page.text
        assert client.post("/dashboard/pull/", data={"url": "https://example.com/m.gguf"}).status_code == 403
        refused = client.post("/dashboard/pull/", data={"url": "ftp://example.com/m.gguf",
                                                         "csrfmiddlewaretoken": csrf_token(page.text)})
        assert refused.status_code == 200 and "give an http://, https:// or hf:// URL" in refused.text


def test_the_pull_progress_socket_is_for_staff_and_opens_with_every_pull(server: DaphneServer) -> None:
    url = f"ws://127.0.0.1:{httpx.URL(server.url).port}/ws/dashboard/pulls/"
    with pytest.raises(InvalidStatus):
        connect(url, additional_headers={"Origin": server.url}).close()
    with staff_client(server) as client, connect(
        url, additional_headers={"Cookie": f"sessionid={client.cookies['sessionid']}", "Origin": server.url}
    ) as socket:
        assert isinstance(json.loads(socket.recv(timeout=30))["pulls"], list)


@needs_chromium
def test_the_console_pulls_with_live_progress_cancels_and_lists_the_model(
    server: DaphneServer, files: FileServer
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    models = server.config.parent / "models"
    with chromium() as browser:
        log_in(browser, server.url, "/dashboard/pull/")
        wait = WebDriverWait(browser, 90)
        wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-pulls") == "open")

        def submit(url: str, name: str) -> None:
            browser.find_element(By.NAME, "url").send_keys(url)
            browser.find_element(By.NAME, "name").send_keys(name)
            browser.find_element(By.CSS_SELECTOR, "#pull-form button[type=submit]").click()

        def row(name: str) -> object:
            return browser.find_element(By.XPATH, f"//tr[.//b[@class='name' and text()='{name}']]")

        submit(f"{files.url}/ok/{SOURCE_NAME}", "pulled-page")
        wait.until(lambda driver: row("pulled-page").get_attribute("data-state") == "done")
        assert "pulled-page is now listed in /v1/models" in row("pulled-page").text
        assert "pulled-page" in listed(server)

        submit(f"{files.url}/slow/{SOURCE_NAME}", "cancelled-page")
        wait.until(lambda driver: row("cancelled-page").get_attribute("data-state") == "downloading"
                   and row("cancelled-page").find_element(By.TAG_NAME, "progress").get_property("value") > 0)
        screenshot(browser, "pull")
        row("cancelled-page").find_element(By.CSS_SELECTOR, "button.cancel").click()
        wait.until(lambda driver: row("cancelled-page").get_attribute("data-state") == "cancelled")
        assert not list(models.glob("cancelled-page*"))
