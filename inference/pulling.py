"""Downloading a GGUF model into the models directory: resumable, verified, moved into place.

`plan_pull()` checks what can be checked before any byte moves (the URL, the name, the
checksum's form, that no model of that name exists); `pull()` does the download, for
`manage.py pull` and the console alike: no Django here, only a progress callback and a cancel
event. Bytes go to `NAME.gguf.part` beside the target (discovery lists only `*.gguf`). An
existing `.part` is continued with an HTTP Range request, If-Range the version its bytes came
from (a server that ignores Range, or a file that changed, sends the whole file, and the
download starts over). The file becomes `NAME.gguf` by one rename once its GGUF header reads
and its sha256 (when given) matches.

What a failure leaves: the `.part`, when it holds bytes and the failure says nothing against
them (a lost connection, an HTTP error, a full disk, Ctrl-C): the next pull of the same name
resumes it. Nothing, after a verdict on the content (not GGUF, wrong checksum) or a cancel.

`pull()` runs on the caller's thread; `cancel` may be set from any other.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

import httpx

from inference.runtime.catalog import GGUF_SUFFIX, GGUFError, listed_name, read_gguf_info, strip_suffix

HF_SCHEME = "hf://"
HF_TOKEN_ENV_VAR = "HF_TOKEN"
_HF_HOSTS = ("huggingface.co", "hf.co")
PART_SUFFIX = ".part"
GGUF_MAGIC = b"GGUF"
_TIMEOUT = httpx.Timeout(30.0, connect=15.0)
_CHUNK_BYTES = 1 << 20
_PROGRESS_INTERVAL = 0.25  # seconds between progress reports while bytes flow
_RATE_WINDOW = 5.0  # seconds of recent bytes the rate is measured over
_MAX_REDIRECTS = 10
_VALIDATOR_ATTRIBUTE = "user.llamasite.validator"  # on a .part: the ETag or Last-Modified of its bytes
_MAX_NAME_BYTES = 200  # file names stop at 255 bytes, and ".gguf.part" comes after the name
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (?:(?P<start>\d+)-\d+|\*)/(?P<total>\d+|\*)$")


class PullError(Exception):
    """A pull cannot go on; the message is one line for the user."""


class PullCancelled(PullError):
    """The pull was cancelled; its partial download is removed."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the pull of {name} was cancelled")


class _Rejected(PullError):
    """The downloaded bytes are not the model asked for; they are removed."""


class PullPhase(enum.Enum):
    CONNECTING = "connecting"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"


@dataclass(frozen=True)
class PullProgress:
    phase: PullPhase
    received: int  # bytes of the file on disk so far, resumed ones included
    total: int | None  # the file's size, when the server says
    resumed_from: int
    bytes_per_second: float  # over the last few seconds

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.bytes_per_second <= 0:
            return None
        return max(0, self.total - self.received) / self.bytes_per_second


ProgressCallback = Callable[[PullProgress], None]


@dataclass(frozen=True)
class PullPlan:
    url: str  # what is fetched (hf:// already expanded)
    name: str
    target: Path
    sha256: str | None

    @property
    def part(self) -> Path:
        return self.target.with_name(self.target.name + PART_SUFFIX)


@dataclass(frozen=True)
class PulledModel:
    name: str
    path: Path
    size_bytes: int
    sha256: str | None  # when one was asked for (and matched)
    resumed_from: int


def plan_pull(*, url: str, directory: Path, name: str | None = None, sha256: str | None = None) -> PullPlan:
    """What a pull of `url` would do; raises PullError for what is wrong before downloading."""
    source = download_url(url)
    name = model_name(source, name)
    target = directory / f"{name}{GGUF_SUFFIX}"
    if target.resolve().parent != directory.resolve():
        raise PullError(f"invalid model name {name!r}: the file must be inside {directory}")
    if target.exists():
        raise PullError(f"a model named {name} already exists in {directory}: remove {target.name} first, or pull "
                        "under another --name")
    checksum = sha256.strip().lower() if sha256 else None
    if checksum is not None and not _SHA256.match(checksum):
        raise PullError("a sha256 checksum is 64 hexadecimal digits")
    return PullPlan(url=source, name=name, target=target, sha256=checksum)


def download_url(url: str) -> str:
    """The http(s) URL to fetch: `hf://owner/repo[@revision]/path/file.gguf` is Hugging Face's
    resolve URL for that file (revision `main` unless given)."""
    url = url.strip()
    if url.startswith(HF_SCHEME):
        owner, _, rest = url[len(HF_SCHEME):].partition("/")
        repo, _, path = rest.partition("/")
        if not (owner and repo and path) or "" in path.split("/"):
            raise PullError(f"{url}: an hf:// URL names owner/repo/file.gguf")
        repo, _, revision = repo.partition("@")
        return f"https://huggingface.co/{owner}/{repo}/resolve/{revision or 'main'}/{path}"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PullError(f"{url}: not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PullError(f"{url}: give an http://, https:// or hf:// URL")
    return url


def model_name(url: str, name: str | None = None) -> str:
    """The model's name: `name`, or the URL's file name without `.gguf`; raises PullError for a
    name that discovery would not list as itself (a path, a hidden file, a projector, a split part)."""
    chosen = name if name is not None else unquote(httpx.URL(url).path).rsplit("/", 1)[-1]
    chosen = strip_suffix(chosen.strip())
    if not chosen:
        raise PullError("the URL names no file: give the model a name with --name")
    if "/" in chosen or "\\" in chosen or not chosen.isprintable():
        raise PullError(f"invalid model name {chosen!r}: no path separators or control characters")
    if len(chosen.encode()) > _MAX_NAME_BYTES:
        raise PullError(f"invalid model name: longer than {_MAX_NAME_BYTES} bytes")
    if listed_name(Path(chosen + GGUF_SUFFIX)) != chosen:
        raise PullError(
            f"invalid model name {chosen!r}: names beginning with a dot or 'mmproj', and split parts "
            "(NAME-00001-of-00003), are not listed as models; choose another with --name"
        )
    return chosen


def token_for(url: httpx.URL) -> str | None:
    """HF_TOKEN, for Hugging Face's own hosts over HTTPS only: a redirect to any other host (or
    a plain-HTTP one) gets no token."""
    host = url.host
    if url.scheme == "https" and any(host == hf or host.endswith("." + hf) for hf in _HF_HOSTS):
        return os.environ.get(HF_TOKEN_ENV_VAR) or None
    return None


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def pull(plan: PullPlan, *, on_progress: ProgressCallback | None = None,
         cancel: threading.Event | None = None) -> PulledModel:
    """Download, verify and move the model into place; raises PullError (PullCancelled)."""
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(plan.part) as part, httpx.Client(timeout=_TIMEOUT) as http:
        download = _Download(plan, part, _Reporter(on_progress), cancel or threading.Event())
        try:
            return download.run(http)
        except (PullError, httpx.HTTPError, OSError) as exc:
            error = _pull_error(download, exc)
            if isinstance(error, (_Rejected, PullCancelled)):
                plan.part.unlink(missing_ok=True)
            raise error from None
        finally:
            if plan.part.exists() and plan.part.stat().st_size == 0:
                plan.part.unlink()


def _pull_error(download: _Download, error: Exception) -> PullError:
    """What a failure means to the user. A cancel wins over whatever it interrupted (a read
    that timed out, say), so a cancelled pull always leaves nothing behind."""
    plan = download.plan
    if download.cancel.is_set():
        return PullCancelled(plan.name)
    if isinstance(error, PullError):
        return error
    if isinstance(error, httpx.HTTPError):
        host = httpx.URL(plan.url).host
        cause = " ".join(str(error).split()) or type(error).__name__
        if download.received == 0:
            return PullError(f"cannot download from {host} ({cause})")
        return PullError(f"the download from {host} broke off at {human_bytes(download.received)} ({cause}); "
                         f"{plan.part.name} is kept: pull again to resume")
    return PullError(f"cannot write {plan.part}: {getattr(error, 'strerror', None) or error}")


@contextmanager
def _locked(part: Path) -> Iterator[BinaryIO]:
    """The `.part` file, open for reading and appending, that no other pull writes meanwhile."""
    with part.open("a+b") as stream:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullError(f"another pull of {part.name.removesuffix(GGUF_SUFFIX + PART_SUFFIX)} is under way"
                            ) from None
        yield stream


class _Download:
    """One pull's bytes: the `.part` file as it grows, its running checksum and first bytes."""

    def __init__(self, plan: PullPlan, part: BinaryIO, reporter: _Reporter, cancel: threading.Event) -> None:
        self.plan, self.part, self.reporter, self.cancel = plan, part, reporter, cancel
        self.received = 0
        self.resumed_from = 0
        self.total: int | None = None
        self.hasher = hashlib.sha256() if plan.sha256 else None
        self.head = b""  # the file's first bytes, until there are enough to check the magic

    def run(self, http: httpx.Client) -> PulledModel:
        self._stop_if_cancelled()
        self._continue_part()
        self.reporter.report(PullPhase.CONNECTING, self, force=True)
        response = self._open(http)
        try:
            self._check_space()
            self.reporter.report(PullPhase.DOWNLOADING, self, force=True)
            if response.status_code != 416:  # 416: the part was complete already
                self._receive(response)
        finally:
            response.close()
        if self.total is not None and self.received != self.total:
            raise PullError(f"the server sent {human_bytes(self.received)} of {human_bytes(self.total)}; pull again "
                            "to resume")
        self.reporter.report(PullPhase.VERIFYING, self, force=True)
        return self._finish()

    def _stop_if_cancelled(self) -> None:
        if self.cancel.is_set():
            raise PullCancelled(self.plan.name)

    def _continue_part(self) -> None:
        """Take up the bytes a previous pull left, unless they cannot begin a GGUF file."""
        self.part.seek(0)
        self.head = self.part.read(len(GGUF_MAGIC))
        if not GGUF_MAGIC.startswith(self.head):
            self._start_over()
            return
        self.received = self.resumed_from = os.fstat(self.part.fileno()).st_size
        if self.hasher is not None:
            self.part.seek(0)
            for chunk in iter(lambda: self.part.read(_CHUNK_BYTES), b""):
                self.hasher.update(chunk)

    def _start_over(self) -> None:
        self.part.truncate(0)
        self.received = self.resumed_from = 0
        self.head = b""
        self.hasher = hashlib.sha256() if self.plan.sha256 else None

    def _open(self, http: httpx.Client) -> httpx.Response:
        """The response whose body continues the part file (starting over where it cannot)."""
        stored = _stored_validator(self.part) if self.received else None
        response = _get(http, self.plan.url, self.received, if_range=stored)
        if response.status_code == 416 and self.received:
            if _content_range(response)[1] == self.received:  # the part was complete already
                self.total = self.received
                return response
        elif response.status_code == 206:
            start, total = _content_range(response)
            validator = _validator(response)
            if start == self.received and not (stored and validator and validator != stored):
                self.total = total
                return response
        elif response.status_code == 200:
            if self.received:  # the server ignored Range, or the file changed (If-Range): here it is whole
                self._start_over()
            self.total = _content_length(response)
            _store_validator(self.part, _validator(response))
            return response
        response.close()
        if response.status_code in (206, 416) and self.received:  # not the bytes asked for
            self._start_over()
            return self._open(http)
        raise PullError(_http_error(response))

    def _check_space(self) -> None:
        if self.total is None:
            return
        needed = self.total - self.received
        free = shutil.disk_usage(self.plan.target.parent).free
        if needed > free:
            raise PullError(f"not enough disk space in {self.plan.target.parent}: {self.plan.name} needs "
                            f"{human_bytes(needed)} more, {human_bytes(free)} are free")

    def _receive(self, response: httpx.Response) -> None:
        for chunk in response.iter_raw(_CHUNK_BYTES):
            self._stop_if_cancelled()
            self.part.write(chunk)
            self.received += len(chunk)
            self._remember(chunk)
            self.reporter.report(PullPhase.DOWNLOADING, self)

    def _remember(self, chunk: bytes) -> None:
        if self.hasher is not None:
            self.hasher.update(chunk)
        if len(self.head) < len(GGUF_MAGIC):
            self.head += chunk[: len(GGUF_MAGIC) - len(self.head)]
            if len(self.head) == len(GGUF_MAGIC) and self.head != GGUF_MAGIC:
                raise _Rejected(f"{self.plan.url} is not a GGUF file (it begins with {self.head!r}); nothing was "
                                "kept")

    def _finish(self) -> PulledModel:
        self.part.flush()
        os.fsync(self.part.fileno())
        try:
            read_gguf_info(self.plan.part)
        except GGUFError as exc:
            raise _Rejected(f"{self.plan.url} is not a usable GGUF model ({exc}); nothing was kept") from None
        digest = self.hasher.hexdigest() if self.hasher else None
        if digest != self.plan.sha256:
            raise _Rejected(f"sha256 mismatch: expected {self.plan.sha256}, got {digest}; the download was removed")
        if self.plan.target.exists():  # appeared while downloading: never overwrite a model
            raise PullError(f"a model named {self.plan.name} appeared in {self.plan.target.parent} meanwhile; "
                            f"{self.plan.part.name} is kept")
        os.replace(self.plan.part, self.plan.target)
        _sync_directory(self.plan.target.parent)
        return PulledModel(name=self.plan.name, path=self.plan.target, size_bytes=self.received, sha256=digest,
                           resumed_from=self.resumed_from)


def _get(http: httpx.Client, url: str, offset: int, *, if_range: str | None) -> httpx.Response:
    """GET from `offset` on (only if the file is still the one `if_range` names), following
    redirects ourselves: each hop decides anew whether the Hugging Face token goes with it."""
    for _ in range(_MAX_REDIRECTS + 1):
        headers = {"Accept-Encoding": "identity"}  # byte offsets count the file's bytes, not gzip's
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if if_range:
                headers["If-Range"] = if_range
        if token := token_for(httpx.URL(url)):
            headers["Authorization"] = f"Bearer {token}"
        response = http.send(http.build_request("GET", url, headers=headers), stream=True)
        if not (response.is_redirect and "location" in response.headers):
            return response
        response.close()
        url = str(response.url.join(response.headers["location"]))
    raise PullError(f"more than {_MAX_REDIRECTS} redirects from {url}")


def _validator(response: httpx.Response) -> str | None:
    """What names this version of the file: a strong ETag, or else Last-Modified."""
    etag = response.headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("last-modified")


def _store_validator(part: BinaryIO, validator: str | None) -> None:
    """Keep the version a `.part` holds bytes of with the file itself (an extended attribute),
    for the If-Range of a later resume."""
    try:
        if validator:
            os.setxattr(part.fileno(), _VALIDATOR_ATTRIBUTE, validator.encode())
        else:
            os.removexattr(part.fileno(), _VALIDATOR_ATTRIBUTE)
    except OSError:
        pass  # none to remove, or a filesystem without user attributes: resumes go unchecked


def _stored_validator(part: BinaryIO) -> str | None:
    try:
        return os.getxattr(part.fileno(), _VALIDATOR_ATTRIBUTE).decode()
    except OSError:
        return None


def _content_range(response: httpx.Response) -> tuple[int | None, int | None]:
    """(first byte, file size) from Content-Range; None where it does not say."""
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if match is None:
        return None, None
    start, total = match["start"], match["total"]
    return (int(start) if start else None), (None if total == "*" else int(total))


def _content_length(response: httpx.Response) -> int | None:
    length = response.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


def _http_error(response: httpx.Response) -> str:
    where = f"{response.url.host}{response.url.path}"
    if response.status_code in (401, 403):
        hint = "" if os.environ.get(HF_TOKEN_ENV_VAR) else " (a gated Hugging Face model needs HF_TOKEN)"
        return f"HTTP {response.status_code} from {where}: access refused{hint}"
    if response.status_code == 404:
        return f"HTTP 404 from {where}: no such file"
    return f"HTTP {response.status_code} from {where}"


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _Reporter:
    """Hands progress to the callback: at each phase, and every _PROGRESS_INTERVAL while bytes flow."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.last = 0.0
        self.samples: deque[tuple[float, int]] = deque()

    def report(self, phase: PullPhase, download: _Download, *, force: bool = False) -> None:
        now = time.monotonic()
        self.samples.append((now, download.received))
        while now - self.samples[0][0] > _RATE_WINDOW:
            self.samples.popleft()
        if self.callback is None or (not force and now - self.last < _PROGRESS_INTERVAL):
            return
        self.last = now
        started, received_then = self.samples[0]
        elapsed = now - started
        rate = max(0.0, download.received - received_then) / elapsed if elapsed > 0 else 0.0
        self.callback(PullProgress(phase=phase, received=download.received, total=download.total,
                                   resumed_from=download.resumed_from, bytes_per_second=rate))
