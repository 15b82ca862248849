"""Secrets kept in files that only their owner can read (Django's secret key, the admin token).

A secret file is written whole or not at all: the secret goes to a temporary file (mode 0600)
in the same directory, which then takes the secret file's name in one step. A file that holds
no secret (empty or blank: an operator's `touch`, or a crash in an older version between
creating and writing it) never counts as one: it gets a new secret, with a warning.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def read_or_create_secret(path: Path) -> str:
    """The secret in `path`; a new one is written there first if it has none."""
    # One read tells a missing file from an empty one: asking `exists()` after a failed read
    # would see a file another process created meanwhile and replace its secret.
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        try:
            return _write_secret(path, replace=False)
        except FileExistsError:  # another process created it first: use theirs
            return read_secret(path) or _write_secret(path, replace=True)
    if secret:
        return secret
    logger.warning("%s held no secret (it was empty): a new one was written to it", path)
    return _write_secret(path, replace=True)


def read_secret(path: Path) -> str | None:
    """The secret in `path`, or None if the file is missing or holds no secret."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_secret(path: Path, *, replace: bool) -> str:
    """Write a new secret to `path` in one step; without `replace`, only if there is no file."""
    secret = secrets.token_urlsafe(48)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as secret_file:
            secret_file.write(secret)
            secret_file.flush()
            os.fsync(secret_file.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the file exists: two first starts keep one secret
    finally:
        Path(temporary).unlink(missing_ok=True)  # left after a link, or a failure
    return secret
