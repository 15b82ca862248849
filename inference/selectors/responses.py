"""Reads of the stored responses (the Responses API's `store`)."""

from __future__ import annotations

from inference.models import StoredResponse


def stored_response_get(response_id: str, *, api_key: str) -> StoredResponse | None:
    """A stored response, if it exists and was stored under this key's prefix ("": no key)."""
    return StoredResponse.objects.filter(response_id=response_id, api_key=api_key).first()
