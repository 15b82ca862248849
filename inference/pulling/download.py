"""The download itself: the `.part` file, continued where a previous pull left it, verified,
and renamed into place.

Bytes go to `NAME.gguf.part` beside the target (discovery lists only `*.gguf`). An existing
`.part` is continued with an HTTP Range request, If-Range the version its bytes came from (a
server that ignores Range, or a file that changed, sends the whole file, and the download
starts over). The file becomes `NAME.gguf` by one rename once its GGUF header reads, its
tensor data is all there (discovery would not list it otherwise) and its sha256 (when given)
matches.

Limits that hold as bytes arrive, whether or not the server gave the file's size: the file may
not grow past model_manager.max_pull_mb, and the models' disk keeps _FREE_SPACE_MARGIN free
(the room is checked before the download, and again after every _SPACE_CHECK_BYTES).

What a failure leaves: the `.part`, when it holds bytes and the failure says nothing against
them (a lost connection, an HTTP error, a full disk or too little room left, Ctrl-C): the next
pull of the same name resumes it. A body of unknown size that ends short of the tensor data its
GGUF header describes counts as a lost connection. Nothing, after a verdict on the content (not
GGUF, short of its tensor data at the size the server gave, wrong checksum, over max_pull_mb)
or a cancel.

`pull()` runs on the caller's thread; `cancel` may be set from any other.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from inference.pulling.plan import PullCancelled, PullError, PullPlan
from inference.pulling.progress import ProgressCallback, PullPhase, Reporter, human_bytes
from inference.pulling.remote import content_length, content_range, described, get_from, http_error, validator
from inference.runtime.gguf_header import GGUFError, GGUFIncomplete, read_gguf_info

GGUF_MAGIC = b"GGUF"
_TIMEOUT = httpx.Timeout(30.0, connect=15.0)
_MIB = 1 << 20
_CHUNK_BYTES = _MIB
_SPACE_CHECK_BYTES = 64 * _MIB  # free space is checked again after this many bytes
_FREE_SPACE_MARGIN = 1_000_000_000  # a pull leaves this much free: the database, logs and caches share the disk
_VALIDATOR_ATTRIBUTE = "user.llamasite.validator"  # on a .part: the ETag or Last-Modified of its bytes


class _Rejected(PullError):
    """The downloaded bytes are not the model asked for; they are removed."""


@dataclass(frozen=True)
class PulledModel:
    name: str
    path: Path
    size_bytes: int
    sha256: str | None  # when one was asked for (and matched)
    resumed_from: int


def pull(
    plan: PullPlan, *, on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> PulledModel:
    """Download, verify and move the model into place; raises PullError (PullCancelled)."""
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(plan) as part, httpx.Client(timeout=_TIMEOUT) as http:
        download = _Download(plan, part, Reporter(on_progress), cancel or threading.Event())
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
        cause = _cause(error)
        if download.received == 0:
            return PullError(f"cannot download from {host} ({cause})")
        return PullError(
            f"the download from {host} broke off at {human_bytes(download.received)} ({cause}); "
            f"{plan.part.name} is kept: pull again to resume"
        )
    return PullError(f"cannot write {plan.part}: {getattr(error, 'strerror', None) or error}")


def _cause(error: httpx.HTTPError) -> str:
    """An HTTP failure in one line. A broken answer is named, not quoted: h11 puts the bytes it
    could not parse after a colon ("illegal chunk header: bytearray(b'...')")."""
    cause = " ".join(str(error).split())
    if isinstance(error, httpx.ProtocolError):
        cause = cause.partition(": ")[0]
    return cause or type(error).__name__


@contextmanager
def _locked(plan: PullPlan) -> Iterator[BinaryIO]:
    """The `.part` file, open for reading and appending, that no other pull writes meanwhile."""
    with plan.part.open("a+b") as stream:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullError(f"another pull of {plan.name} is under way") from None
        yield stream


class _Download:
    """One pull's bytes: the `.part` file as it grows, its running checksum and first bytes, and
    what sent them."""

    def __init__(self, plan: PullPlan, part: BinaryIO, reporter: Reporter, cancel: threading.Event) -> None:
        self.plan, self.part, self.reporter, self.cancel = plan, part, reporter, cancel
        self.received = 0
        self.resumed_from = 0
        self.total: int | None = None
        self.hasher = hashlib.sha256() if plan.sha256 else None
        self.head = b""  # the file's first bytes, until there are enough to check the magic
        self.sender = ""  # described(): what answered, for errors about what it sent
        self.next_space_check = 0  # received bytes after which free space is checked again

    def run(self, http: httpx.Client) -> PulledModel:
        self._stop_if_cancelled()
        self._continue_part()
        self._report(PullPhase.CONNECTING, force=True)
        response = self._open(http)
        try:
            if self.total is not None:
                self._check_size(self.total)
            self._report(PullPhase.DOWNLOADING, force=True)
            if response.status_code != 416:  # 416: the part was complete already
                self._check_space()
                self._receive(response)
        finally:
            response.close()
        if self.total is not None and self.received != self.total:
            raise PullError(
                f"the server sent {human_bytes(self.received)} of {human_bytes(self.total)}; pull again to resume"
            )
        self._report(PullPhase.VERIFYING, force=True)
        return self._finish()

    def _report(self, phase: PullPhase, *, force: bool = False) -> None:
        self.reporter.report(
            phase, received=self.received, total=self.total, resumed_from=self.resumed_from, force=force
        )

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
        response = get_from(http, self.plan.url, self.received, if_range=stored)
        self.sender = described(response)
        if response.status_code == 416 and self.received:
            if content_range(response)[1] == self.received:  # the part was complete already
                self.total = self.received
                return response
        elif response.status_code == 206:
            start, total = content_range(response)
            version = validator(response)
            if start == self.received and not (stored and version and version != stored):
                self.total = total
                return response
        elif response.status_code == 200:
            if self.received:  # the server ignored Range, or the file changed (If-Range): here it is whole
                self._start_over()
            self.total = content_length(response)
            _store_validator(self.part, validator(response))
            return response
        response.close()
        if response.status_code in (206, 416) and self.received:  # not the bytes asked for
            self._start_over()
            return self._open(http)
        raise PullError(http_error(response))

    def _check_size(self, size: int) -> None:
        """Refuse a file over model_manager.max_pull_mb: by the size the server gives, else as
        its bytes arrive."""
        limit = self.plan.max_bytes
        if limit is None or size <= limit:
            return
        allowed = f"model_manager.max_pull_mb ({limit // _MIB} MiB)"
        if self.total is not None:
            raise _Rejected(f"{self.plan.name} is {human_bytes(size)}, more than {allowed} allows; nothing was kept")
        raise _Rejected(
            f"{self.plan.name} grew past {allowed} as it arrived (the server gave no size); the download was removed"
        )

    def _check_space(self) -> None:
        """Stop before the disk has less than _FREE_SPACE_MARGIN free: with room for the rest of
        the file when its size is known, else for the next _SPACE_CHECK_BYTES; checked again
        after each of those (a file of unknown size; others writing to the disk meanwhile)."""
        self.next_space_check = self.received + _SPACE_CHECK_BYTES
        needed = self.total - self.received if self.total is not None else _SPACE_CHECK_BYTES
        free = shutil.disk_usage(self.plan.target.parent).free
        if needed + _FREE_SPACE_MARGIN <= free:
            return
        if self.total is not None:
            need = f"needs {human_bytes(needed)} more"
        else:
            need = f"is at {human_bytes(self.received)}, of a size the server did not give"
        kept = f"; {self.plan.part.name} is kept: make room and pull again to resume" if self.received else ""
        raise PullError(
            f"not enough disk space in {self.plan.target.parent}: {self.plan.name} {need}, "
            f"{human_bytes(free)} are free and a pull leaves {human_bytes(_FREE_SPACE_MARGIN)}{kept}"
        )

    def _receive(self, response: httpx.Response) -> None:
        for chunk in response.iter_raw(_CHUNK_BYTES):
            self._stop_if_cancelled()
            self._check_size(self.received + len(chunk))
            if self.received + len(chunk) > self.next_space_check:
                self._check_space()
            self.part.write(chunk)
            self.received += len(chunk)
            self._remember(chunk)
            self._report(PullPhase.DOWNLOADING)

    def _remember(self, chunk: bytes) -> None:
        if self.hasher is not None:
            self.hasher.update(chunk)
        if len(self.head) < len(GGUF_MAGIC):
            self.head += chunk[: len(GGUF_MAGIC) - len(self.head)]
            if len(self.head) == len(GGUF_MAGIC) and self.head != GGUF_MAGIC:
                raise _Rejected(
                    f"{self.sender} sent something that is not a GGUF file (no GGUF magic); nothing was kept"
                )

    def _finish(self) -> PulledModel:
        self.part.flush()
        os.fsync(self.part.fileno())
        try:
            read_gguf_info(self.plan.part)
        except GGUFIncomplete as exc:
            raise self._short(exc) from None
        except GGUFError as exc:
            raise _Rejected(f"{self.plan.shown_url} is not a usable GGUF model ({exc}); nothing was kept") from None
        digest = self.hasher.hexdigest() if self.hasher else None
        if digest != self.plan.sha256:
            raise _Rejected(f"sha256 mismatch: expected {self.plan.sha256}, got {digest}; the download was removed")
        if self.plan.target.exists():  # appeared while downloading: never overwrite a model
            raise PullError(
                f"a model named {self.plan.name} appeared in {self.plan.target.parent} meanwhile; "
                f"{self.plan.part.name} is kept"
            )
        os.replace(self.plan.part, self.plan.target)
        _sync_directory(self.plan.target.parent)
        return PulledModel(
            name=self.plan.name,
            path=self.plan.target,
            size_bytes=self.received,
            sha256=digest,
            resumed_from=self.resumed_from,
        )

    def _short(self, short: GGUFIncomplete) -> PullError:
        """A file short of the tensor data its header describes: the server's whole file when it
        gave the size (a verdict on the file: removed), else perhaps a connection that closed
        early, which a body of unknown size cannot tell from its end (kept, to resume)."""
        of = f"{human_bytes(short.size)} of the {human_bytes(short.expected)} its GGUF header describes"
        if self.total is not None:
            return _Rejected(f"{self.sender} sent a GGUF file short of its tensor data ({of}); nothing was kept")
        return PullError(
            f"the download of {self.plan.name} ended at {of}, and the server gave no size: the "
            f"connection may have closed early; {self.plan.part.name} is kept: pull again to resume"
        )


def _store_validator(part: BinaryIO, version: str | None) -> None:
    """Keep the version a `.part` holds bytes of with the file itself (an extended attribute),
    for the If-Range of a later resume."""
    try:
        if version:
            os.setxattr(part.fileno(), _VALIDATOR_ATTRIBUTE, version.encode())
        else:
            os.removexattr(part.fileno(), _VALIDATOR_ATTRIBUTE)
    except OSError:
        pass  # none to remove, or a filesystem without user attributes: resumes go unchecked


def _stored_validator(part: BinaryIO) -> str | None:
    try:
        return os.getxattr(part.fileno(), _VALIDATOR_ATTRIBUTE).decode()
    except OSError:
        return None


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
