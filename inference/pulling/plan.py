"""What a pull would do, checked before any byte moves: the URL (hf:// expanded), the model's
name and file, the checksum's form, and that no model of that name exists."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import httpx

from inference.pulling.redaction import redacted
from inference.runtime.catalog import GGUF_SUFFIX, listed_name, strip_suffix

HF_SCHEME = "hf://"
PART_SUFFIX = ".part"
_MAX_NAME_BYTES = 200  # file names stop at 255 bytes, and ".gguf.part" comes after the name
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PullError(Exception):
    """A pull cannot go on; the message is one line for the user."""


class PullCancelled(PullError):
    """The pull was cancelled; its partial download is removed."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the pull of {name} was cancelled")


@dataclass(frozen=True)
class PullPlan:
    url: str = field(repr=False)  # what is fetched (hf:// expanded); may hold a password: show shown_url
    name: str
    target: Path
    sha256: str | None
    max_bytes: int | None = None  # model_manager.max_pull_mb; None: no limit

    @property
    def shown_url(self) -> str:
        return redacted(self.url)

    @property
    def part(self) -> Path:
        return self.target.with_name(self.target.name + PART_SUFFIX)


def plan_pull(
    *, url: str, directory: Path, name: str | None = None, sha256: str | None = None, max_mb: int = 0
) -> PullPlan:
    """What a pull of `url` would do (with files up to `max_mb` MiB; 0: any size); raises
    PullError for what is wrong before downloading."""
    source = download_url(url)
    name = model_name(source, name)
    target = directory / f"{name}{GGUF_SUFFIX}"
    if target.resolve().parent != directory.resolve():
        raise PullError(f"invalid model name {name!r}: the file must be inside {directory}")
    if target.exists():
        raise PullError(
            f"a model named {name} already exists in {directory}: remove {target.name} first, or pull "
            "under another --name"
        )
    checksum = sha256.strip().lower() if sha256 else None
    if checksum is not None and not _SHA256.match(checksum):
        raise PullError("a sha256 checksum is 64 hexadecimal digits")
    return PullPlan(url=source, name=name, target=target, sha256=checksum, max_bytes=max_mb * 1024 * 1024 or None)


def download_url(url: str) -> str:
    """The http(s) URL to fetch: `hf://owner/repo[@revision]/path/file.gguf` is Hugging Face's
    resolve URL for that file (revision `main` unless given)."""
    url = url.strip()
    if url.startswith(HF_SCHEME):
        owner, _, rest = url[len(HF_SCHEME) :].partition("/")
        repo, _, path = rest.partition("/")
        if not (owner and repo and path) or "" in path.split("/"):
            raise PullError(f"{redacted(url)}: an hf:// URL names owner/repo/file.gguf")
        repo, _, revision = repo.partition("@")
        return f"https://huggingface.co/{owner}/{repo}/resolve/{revision or 'main'}/{path}"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PullError(f"{redacted(url)}: not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PullError(f"{redacted(url)}: give an http://, https:// or hf:// URL")
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
            f"invalid model name {chosen!r}: names beginning with a dot or 'mmproj' or ending in '.mmproj', "
            "and split parts (NAME-00001-of-00003), are not listed as models; choose another with --name"
        )
    return chosen
