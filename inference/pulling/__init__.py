"""Pulling a GGUF model into the models directory, for `manage.py pull` and the console alike:
no Django here, only a progress callback and a cancel event.

`plan_pull()` checks what can be checked before any byte moves (plan.py); `pull()` downloads,
resumably, verifies and moves the file into place (download.py) from the server of the URL
(remote.py), reporting its progress (progress.py). A URL is only ever shown redacted
(redaction.py).
"""

from inference.pulling.download import PulledModel, pull
from inference.pulling.plan import PullCancelled, PullError, PullPlan, download_url, model_name, plan_pull
from inference.pulling.progress import PullPhase, PullProgress, human_bytes
from inference.pulling.remote import token_for

__all__ = [
    "PullCancelled",
    "PullError",
    "PullPhase",
    "PullPlan",
    "PullProgress",
    "PulledModel",
    "download_url",
    "human_bytes",
    "model_name",
    "plan_pull",
    "pull",
    "token_for",
]
