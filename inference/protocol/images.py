"""Images as requests carry them, whatever the API: a data URL or base64 data decoded, its
format known by its magic bytes (PNG, JPEG, GIF, WebP, BMP), its size read from its header
(stdlib only), and the limits applied (`server.max_image_bytes`, MAX_PIXELS, MAX_IMAGES). An
http(s) URL is refused while `server.fetch_image_urls` is off; with it on, it becomes an Image
not fetched yet (`url` set, no data: `pending`), which serving fetches before the conversation
is used (`inference.serving.image_urls`) and checks as these are. Any other scheme is always
refused. Nothing here does I/O.

A turn's text holds MEDIA_MARKER where each of its images was, in order: llama.cpp's multimodal
library (mtmd) places each image at that marker in the prompt."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rest_framework import serializers

from inference.config import get_config
from inference.runtime.jobs import IMAGE_MARKER

MEDIA_MARKER = IMAGE_MARKER  # the runtime's (not mtmd's default: a text holding that is text)
MAX_IMAGES = 16  # per request, over the whole conversation
MAX_PIXELS = 50_000_000  # width × height of one image: beyond any camera's, below a decompression bomb
DETAILS = ("auto", "low", "high")


class ImageRefused(ValueError):
    """An image a request cannot carry; the message says why, `at` where (once known)."""

    def __init__(self, message: str, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.at = at

    def validation_error(self, at: tuple[str | int, ...] = ()) -> serializers.ValidationError:
        """A 400 whose param is the part (`messages[0].content[1]`)."""
        detail: object = str(self)
        for key in reversed(at or self.at):
            detail = {key: detail}
        return serializers.ValidationError(detail)


@dataclass(frozen=True)
class Image:
    data: bytes = field(repr=False)  # the encoded file, as sent
    media_type: str  # by its magic bytes: image/png, image/jpeg, image/gif, image/webp, image/bmp
    width: int
    height: int
    sha256: str  # of `data`: the runtime's cache key
    at: tuple[str | int, ...] = ()  # where the request had it: ("messages", 0, "content", 1)
    url: str = ""  # an http(s) URL it was given by (no `data` yet: `pending` until serving fetches it)

    @property
    def pending(self) -> bool:
        """Given by an http(s) URL and not fetched yet."""
        return bool(self.url) and not self.data

    @property
    def part(self) -> str:
        """`at` as the error params say it: messages[0].content[1]."""
        path = ""
        for key in self.at:
            path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
        return path


def image_from_url(url: object) -> Image:
    """An image given by URL (OpenAI's image_url, Anthropic's url source): a data URL decoded; an
    http(s) URL, with server.fetch_image_urls on, as an Image to fetch (`pending`); any other
    raises ImageRefused."""
    if not isinstance(url, str) or not url:
        raise ImageRefused("Expected an image URL: a data URL such as 'data:image/png;base64,...'.")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        header, comma, payload = url[5:].partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise ImageRefused("A data URL image must be base64: 'data:image/png;base64,...'.")
        if not header.lower().startswith("image/"):
            raise ImageRefused(f"A data URL image needs an image media type, not {header[:-7] or 'none'!r}.")
        return image_from_base64(payload)
    if scheme in ("http", "https"):
        if not get_config().server.fetch_image_urls:
            raise ImageRefused(
                "Images by http(s) URL are not fetched: server.fetch_image_urls is off; send a data URL."
            )
        try:
            host = urlsplit(url).hostname
        except ValueError:  # a malformed port or IPv6 address
            host = None
        if not host:
            raise ImageRefused("An http(s) image URL needs a valid host: 'https://example.com/cat.png'.")
        return Image(b"", "", 0, 0, "", url=url)
    what = f"a {scheme}: URL" if scheme else "a URL without a scheme"
    raise ImageRefused(f"An image URL must be a data URL ('data:image/png;base64,...'), not {what}.")


def image_from_source(source: dict[str, object]) -> Image:
    """Anthropic's image source: {"type": "base64", "media_type", "data"} or {"type": "url", "url"}."""
    if source.get("type") == "base64":
        media_type = source.get("media_type")
        if not isinstance(media_type, str):
            raise ImageRefused("A base64 image source needs a string 'media_type'.")
        return image_from_base64(source.get("data"), media_type)
    if source.get("type") == "url":
        return image_from_url(source.get("url"))
    raise ImageRefused("An image source's 'type' must be 'base64' or 'url'.")


def image_from_base64(data: object, media_type: str | None = None) -> Image:
    """Base64 image data decoded and checked; `media_type`, where the API declares one, must be
    what the bytes are."""
    limit = get_config().server.max_image_bytes
    if not isinstance(data, str) or not data:
        raise ImageRefused("Expected the image as a non-empty base64 string.")
    if len(data) > (limit + 2) // 3 * 4:
        raise ImageRefused(f"The image is larger than server.max_image_bytes ({limit} bytes).")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("The image data is not valid base64.") from None
    if len(raw) > limit:
        raise ImageRefused(f"The image is larger than server.max_image_bytes ({limit} bytes).")
    image = image_from_bytes(raw)
    if media_type is not None and media_type.lower().replace("/jpg", "/jpeg") != image.media_type:
        raise ImageRefused(f"The image is {image.media_type}, not {media_type} as its media_type says.")
    return image


def image_from_bytes(raw: bytes) -> Image:
    """An encoded image checked: a known format, a readable size within MAX_PIXELS."""
    known = [(media_type, size_of) for media_type, (magic, size_of) in _FORMATS.items() if magic(raw)]
    if not known:
        raise ImageRefused("The image is not PNG, JPEG, GIF, WebP or BMP.")
    media_type, size_of = known[0]
    try:
        width, height = size_of(raw)
    except (struct.error, IndexError, ValueError):
        width = height = 0
    if width <= 0 or height <= 0:
        raise ImageRefused(f"The image is corrupt: its {media_type} header gives no size.")
    if width * height > MAX_PIXELS:
        raise ImageRefused(f"The image is {width}×{height}: more than {MAX_PIXELS} pixels.")
    return Image(raw, media_type, width, height, hashlib.sha256(raw).hexdigest())


def images_counted(images: Iterable[Image]) -> None:
    """Raises ImageRefused at the first image beyond MAX_IMAGES."""
    for number, image in enumerate(images, start=1):
        if number > MAX_IMAGES:
            raise ImageRefused(f"At most {MAX_IMAGES} images per request.", image.at)


def _png(raw: bytes) -> tuple[int, int]:
    if raw[12:16] != b"IHDR":
        raise ValueError("no IHDR")
    return struct.unpack(">II", raw[16:24])


def _gif(raw: bytes) -> tuple[int, int]:
    return struct.unpack("<HH", raw[6:10])


def _bmp(raw: bytes) -> tuple[int, int]:
    if struct.unpack("<I", raw[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", raw[18:22])
    width, height = struct.unpack("<ii", raw[18:26])
    return width, abs(height)  # negative: stored top-down


def _webp(raw: bytes) -> tuple[int, int]:
    chunk = raw[12:16]
    if chunk == b"VP8 " and raw[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", raw[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and raw[20] == 0x2F:
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(raw[24:27], "little") + 1, int.from_bytes(raw[27:30], "little") + 1
    raise ValueError("unknown WebP chunk")


_JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn: the frame header


def _jpeg(raw: bytes) -> tuple[int, int]:
    index = 2
    while index + 9 <= len(raw):
        if raw[index] != 0xFF:
            raise ValueError("not a marker")
        marker = raw[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
        elif marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            index += 2
        elif marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", raw[index + 5 : index + 9])
            return width, height
        else:
            index += 2 + struct.unpack(">H", raw[index + 2 : index + 4])[0]
    raise ValueError("no frame header")


_FORMATS: dict[str, tuple[Callable[[bytes], bool], Callable[[bytes], tuple[int, int]]]] = {
    "image/png": (lambda raw: raw.startswith(b"\x89PNG\r\n\x1a\n"), _png),
    "image/jpeg": (lambda raw: raw.startswith(b"\xff\xd8\xff"), _jpeg),
    "image/gif": (lambda raw: raw[:6] in (b"GIF87a", b"GIF89a"), _gif),
    "image/webp": (lambda raw: raw[:4] == b"RIFF" and raw[8:12] == b"WEBP", _webp),
    "image/bmp": (lambda raw: raw[:2] == b"BM" and len(raw) >= 26, _bmp),
}
