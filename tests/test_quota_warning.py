"""A key past 80% of its daily tokens is logged once (per key and UTC day) and listed on the usage
dashboard with its use and limit."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from inference.access import quotas
from inference.models import ApiKey
from inference.selectors import usage as usage_selectors
from inference.services import keys as key_services
from tests.record_factory import make_record

pytestmark = pytest.mark.django_db(transaction=True)


def key_using(name: str, tokens: int, *, limit: int | None = 1000, when: datetime | None = None) -> ApiKey:
    """A key with a daily quota of `limit` tokens that used `tokens` (on two servers) at `when`."""
    key, _ = key_services.api_key_create(name=name, tokens_per_day=limit)
    moment = when or datetime.now(UTC)
    make_record(moment, api_key=key.prefix, prompt_tokens=tokens // 2, completion_tokens=0)
    make_record(moment, api_key=key.prefix, prompt_tokens=tokens - tokens // 2, completion_tokens=0, instance="b:1")
    return key


@pytest.fixture
def keys() -> dict[str, ApiKey]:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    keys = {
        "near": key_using("near", 850),
        "spent": key_using("spent", 1200),
        "half": key_using("half", 500),
        "yesterday": key_using("yesterday", 900, when=yesterday),
        "unlimited": key_using("unlimited", 5000, limit=None),
        "revoked": key_using("revoked", 990),
    }
    key_services.api_key_revoke(prefix=keys["revoked"].prefix)
    return keys


def test_the_selector_lists_the_live_keys_past_80_percent_today(keys: dict[str, ApiKey]) -> None:
    near = usage_selectors.api_keys_near_token_quota(day=datetime.now(UTC).date())
    assert [(use.name, use.used, use.limit, use.percent) for use in near] == [
        ("spent", 1200, 1000, 120),
        ("near", 850, 1000, 85),
    ]


def test_the_dashboard_shows_the_warning(admin_client: Client, keys: dict[str, ApiKey]) -> None:
    page = admin_client.get("/dashboard/").content.decode()
    assert 'id="quota-warnings" role="alert"' in page
    assert "API keys past 80% of their daily tokens" in page
    assert f"<b>near</b> · {keys['near'].prefix}… has used 850 of 1000 tokens today (UTC), 85%" in page
    assert f"<b>spent</b> · {keys['spent'].prefix}… has used 1200 of 1000 tokens today (UTC), 120%: refused" in page
    assert "<b>half</b>" not in page and "<b>yesterday</b>" not in page


def test_no_warning_when_every_key_is_below(admin_client: Client) -> None:
    key_using("half", 500)
    assert 'id="quota-warnings"' not in admin_client.get("/dashboard/").content.decode()


async def test_a_key_past_80_percent_is_logged_once_a_day(caplog: pytest.LogCaptureFixture) -> None:
    near = await sync_to_async(key_using)("near", 850)
    below = await sync_to_async(key_using)("below", 790)
    with caplog.at_level(logging.WARNING, logger="inference.access.quotas"):
        for _ in range(3):
            await quotas.quota_check(near)
            await quotas.quota_check(below)
    line = f"API key {near.prefix}… (near) has used 850 of its 1000 tokens for today (UTC), 85%"
    assert caplog.text.count(line) == 1
    assert below.prefix not in caplog.text
    quotas._quota_warnings.note(near, 900, datetime.now(UTC).date() + timedelta(days=1))  # a new UTC day
    assert caplog.text.count(f"API key {near.prefix}… (near) has used") == 2
