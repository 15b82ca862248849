"""How a pull's URL is shown: without what would let a reader download it too.

A URL may carry a password (`http://user:secret@host/…`, or a token as a lone user name) and,
in its query string, a signature (the presigned URLs Hugging Face redirects to) or a token.
Every message, log line, console row and socket message shows a URL through `redacted()`, and
httpx's own request log lines (it logs each request's full URL at INFO) go through
`RedactedURLs`, installed on its logger by settings.LOGGING (which also keeps httpcore's
DEBUG traces, each answer's headers, out of the log).
"""

from __future__ import annotations

import logging
import re

import httpx

_HIDDEN = "***"
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")


def redacted(url: str | httpx.URL) -> str:
    """`url` fit to show anyone: the password (or a user name alone, often a token) and the
    query string's values as ***; the fragment (never sent) is left out. Works on any text,
    a URL httpx would refuse included."""
    text = _USERINFO.sub(_hidden_userinfo, str(url), count=1).partition("#")[0]
    address, question, query = text.partition("?")
    if not question:
        return address
    return f"{address}?{'&'.join(_hidden_value(parameter) for parameter in query.split('&'))}"


def _hidden_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{_HIDDEN}@" if colon else f"{match['scheme']}{_HIDDEN}@"


def _hidden_value(parameter: str) -> str:
    if not parameter:
        return parameter
    name, equals, _ = parameter.partition("=")
    return f"{name}={_HIDDEN}" if equals else _HIDDEN


class RedactedURLs(logging.Filter):
    """For httpx's logger: the URLs in its records shown as `redacted()` shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redacted(arg) if isinstance(arg, httpx.URL) else arg for arg in record.args)
        return True
