"""Pulling models: `manage.py pull` against a local HTTP server that serves the real SmolLM2 file
(a full pull the running server then lists, a connection cut half-way and resumed, a server
that ignores Range, a wrong checksum, a body that is not GGUF), hf:// URLs and where HF_TOKEN
goes, the names a pull accepts; and the console's pull page, in Chromium. What a pull never
does (show secrets, quote remote bytes, fill the disk, ...) is tests/test_pull_safety.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError
from django.core.management.base import OutputWrapper
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from inference import pulling
from inference.management.progress import TerminalProgress
from inference.pulling import (
    PullCancelled,
    PullError,
    PullPhase,
    PullProgress,
    download_url,
    model_name,
    plan_pull,
    token_for,
)
from inference.runtime.catalog import scan
from tests.browser import chromium, console_server, csrf_token, log_in, needs_chromium, screenshot, staff_client
from tests.conftest import (
    PROJECT_DIR,
    SMOLLM2,
    SOURCE_NAME,
    DaphneServer,
    ServerFactory,
    files_in,
    link_model,
    pull_command,
    sha256_of,
    wait_for,
)
from tests.file_server import FileServer
from tests.gguf_files import write_synthetic


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with console_server(server_factory, "pull") as server:
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


@pytest.mark.slow
def test_a_pull_cut_half_way_resumes_with_a_range_request(
    models: Path, files: FileServer, source_sha256: str, smollm2_file: Path
) -> None:
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


@pytest.mark.slow
def test_a_file_replaced_since_the_cut_is_downloaded_again_whole(
    models: Path, files: FileServer, source_sha256: str
) -> None:
    url = f"{files.url}/cut-once/{SOURCE_NAME}"
    with pytest.raises(CommandError, match="broke off"):
        pull_command(url)
    files.etag = '"v2"'

    output = pull_command(url)

    assert files.seen[-1].headers["if-range"] == '"v1"'  # the version the kept bytes came from
    assert "resumed" not in output
    assert sha256_of(models / f"{SMOLLM2}.gguf") == source_sha256


@pytest.mark.slow
def test_a_server_that_ignores_range_starts_the_download_over(
    models: Path, files: FileServer, source_sha256: str, smollm2_file: Path
) -> None:
    models.mkdir()
    (models / "restarted.gguf.part").write_bytes(smollm2_file.read_bytes()[:10_000_000])

    pull_command(f"{files.url}/no-range/{SOURCE_NAME}", "--name", "restarted", "--sha256", source_sha256)

    assert files.seen[-1].headers["range"] == "bytes=10000000-"  # asked, and got the whole file
    assert sha256_of(models / "restarted.gguf") == source_sha256
    assert files_in(models) == ["restarted.gguf"]


@pytest.mark.slow
def test_a_wrong_checksum_fails_in_one_line_and_keeps_nothing(models: Path, files: FileServer) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "pull", f"{files.url}/ok/{SOURCE_NAME}", "--sha256", "0" * 64],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
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


@pytest.mark.slow
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
    halfway = PullProgress(
        phase=PullPhase.DOWNLOADING, received=49_000_000, total=98_000_000, resumed_from=0, bytes_per_second=12_250_000
    )
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


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("hf://owner/repo/model.Q4_K_M.gguf", "https://huggingface.co/owner/repo/resolve/main/model.Q4_K_M.gguf"),
        ("hf://owner/repo/path/to/file.gguf", "https://huggingface.co/owner/repo/resolve/main/path/to/file.gguf"),
        ("hf://owner/repo@v1.0/file.gguf", "https://huggingface.co/owner/repo/resolve/v1.0/file.gguf"),
        ("https://example.com/m.gguf", "https://example.com/m.gguf"),
    ],
)
def test_hf_urls_are_hugging_face_resolve_urls(url: str, expected: str) -> None:
    assert download_url(url) == expected
    assert model_name(download_url(url)) == Path(expected).stem


@pytest.mark.parametrize("url", ["hf://owner/file.gguf", "hf://owner/repo/", "ftp://example.com/m.gguf", "m.gguf"])
def test_urls_that_name_no_file_are_refused(url: str) -> None:
    with pytest.raises(PullError):
        download_url(url)


def test_hf_token_goes_to_hugging_face_over_https_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    for url in (
        "https://huggingface.co/o/r/resolve/main/f.gguf",
        "https://cdn-lfs.huggingface.co/x",
        "https://hf.co/o/r/resolve/main/f.gguf",
    ):
        assert token_for(httpx.URL(url)) == "hf_secret", url
    for url in (
        "http://huggingface.co/o/r/f.gguf",
        "https://huggingface.co.evil.example/f.gguf",
        "https://nothuggingface.co/f.gguf",
        "https://example.com/f.gguf",
    ):
        assert token_for(httpx.URL(url)) is None, url
    monkeypatch.delenv("HF_TOKEN")
    assert token_for(httpx.URL("https://huggingface.co/o/r/f.gguf")) is None


@pytest.mark.slow
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


@pytest.mark.parametrize(
    "name", ["../evil", "a/b", "a\\b", ".hidden", "mmproj-vision", "big-00001-of-00002", " ", "tab\tname", "x" * 201]
)
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


def test_the_pull_page_is_for_staff_and_its_form_needs_the_csrf_token(server: DaphneServer) -> None:
    anonymous = httpx.get(f"{server.url}/dashboard/pull/", timeout=30)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous.headers["location"]

    with staff_client(server) as client:
        page = client.get("/dashboard/pull/")
        assert page.status_code == 200 and 'aria-current="page">Pull models' in page.text
        assert client.post("/dashboard/pull/", data={"url": "https://example.com/m.gguf"}).status_code == 403
        refused = client.post(
            "/dashboard/pull/", data={"url": "ftp://example.com/m.gguf", "csrfmiddlewaretoken": csrf_token(page.text)}
        )
        assert refused.status_code == 200 and "give an http://, https:// or hf:// URL" in refused.text


def test_the_pull_progress_socket_is_for_staff_and_opens_with_every_pull(server: DaphneServer) -> None:
    url = f"ws://127.0.0.1:{httpx.URL(server.url).port}/ws/dashboard/pulls/"
    with pytest.raises(InvalidStatus):
        connect(url, additional_headers={"Origin": server.url}).close()
    with (
        staff_client(server) as client,
        connect(
            url, additional_headers={"Cookie": f"sessionid={client.cookies['sessionid']}", "Origin": server.url}
        ) as socket,
    ):
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
        wait.until(
            lambda driver: (
                row("cancelled-page").get_attribute("data-state") == "downloading"
                and row("cancelled-page").find_element(By.TAG_NAME, "progress").get_property("value") > 0
            )
        )
        screenshot(browser, "pull")
        row("cancelled-page").find_element(By.CSS_SELECTOR, "button.cancel").click()
        wait.until(lambda driver: row("cancelled-page").get_attribute("data-state") == "cancelled")
        assert not list(models.glob("cancelled-page*"))
