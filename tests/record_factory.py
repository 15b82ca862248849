"""Request records written directly (with their rollups), for reporting tests and benchmarks."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction

from inference.models import RequestRecord
from inference.records.recording import daily_usage_add


def make_record(
    created_at: datetime,
    *,
    model: str = "model-a",
    status: str = "ok",
    prompt_tokens: int = 10,
    cached_tokens: int = 0,
    completion_tokens: int = 20,
    ttft_ms: float | None = 50.0,
    tokens_per_second: float | None = 100.0,
    duration_ms: float = 500.0,
    http_status: int = 200,
    instance: str = "127.0.0.1:8080",
    api_key: str = "",
    endpoint: str = "/v1/chat/completions",
    source: str = "",
) -> RequestRecord:
    with transaction.atomic():  # as the server writes them: the rollup row is locked meanwhile
        record = RequestRecord.objects.create(
            instance=instance,
            completion_id=f"chatcmpl-{uuid.uuid4().hex}",
            model=model,
            endpoint=endpoint,
            source=source,
            status=status,
            http_status=http_status,
            error_code="model_not_found" if status == "error" else "",
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            completion_tokens=completion_tokens,
            ttft_ms=ttft_ms,
            tokens_per_second=tokens_per_second,
            duration_ms=duration_ms,
            api_key=api_key,
            created_at=created_at,
        )
        daily_usage_add(record)
    return record
