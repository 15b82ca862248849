"""Upkeep of the request records: retention and rebuilding the daily rollups."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from inference.models import DailyUsage, RequestRecord, StoredResponse

logger = logging.getLogger(__name__)


def request_records_prune(*, older_than_days: int) -> int:
    """Delete request records older than the retention period (daily totals stay); how many."""
    if older_than_days <= 0:
        return 0
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    deleted, _ = RequestRecord.objects.filter(created_at__lt=cutoff).delete()
    StoredResponse.objects.filter(created_at__lt=cutoff).delete()  # the same retention
    return deleted


def daily_usage_rebuild() -> int:
    """Recompute the daily rollups of every day that still has request records; how many rows."""
    first = RequestRecord.objects.order_by("created_at").values_list("created_at", flat=True).first()
    if first is None:
        return 0
    rollups: dict[tuple[str, Any, str, str], DailyUsage] = {}
    columns = ("instance", "created_at", "model", "api_key", *DailyUsage.COUNTED_COLUMNS)
    for instance, created, model, api_key, *values in RequestRecord.objects.values_list(*columns).iterator(
        chunk_size=20000
    ):
        day = created.astimezone(UTC).date()
        usage = rollups.get((instance, day, model, api_key))
        if usage is None:
            usage = rollups[(instance, day, model, api_key)] = DailyUsage(
                instance=instance, day=day, model=model, api_key=api_key
            )
        usage.count_request(*values)
    with transaction.atomic():
        DailyUsage.objects.filter(day__gte=first.astimezone(UTC).date()).delete()
        DailyUsage.objects.bulk_create(rollups.values(), batch_size=1000)
    return len(rollups)
