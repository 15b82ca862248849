"""The usage dashboard: summary and charts over a range, CSV export, the live feed, and
`manage.py usage`."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.core.management import call_command
from django.test import Client

from dashboard.consumers import RequestFeedConsumer
from inference.models import DailyUsage, RequestRecord
from inference.records import recording
from inference.selectors import usage as usage_selectors
from tests.record_factory import make_record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def history() -> datetime:
    """Records over the last 20 days, of two models, some failed or cancelled; returns now."""
    now = datetime.now(UTC)
    for days_ago in range(20):
        for hour in (1, 5):
            moment = now - timedelta(days=days_ago, hours=hour)
            make_record(moment, model="model-a", ttft_ms=40.0 + days_ago, tokens_per_second=120.0)
            make_record(moment, model="model-b", completion_tokens=50, ttft_ms=400.0, tokens_per_second=60.0)
    make_record(
        now - timedelta(minutes=10),
        model="model-b",
        status="error",
        completion_tokens=0,
        ttft_ms=None,
        tokens_per_second=None,
        http_status=404,
    )
    make_record(
        now - timedelta(minutes=20), model="model-a", status="cancelled", completion_tokens=3, duration_ms=9000.0
    )
    return now


def test_summary_from_records_and_from_rollups_agree(history: datetime) -> None:
    day = usage_selectors.usage_summary(since=history - timedelta(days=1), until=history)
    assert not day.from_rollups and day.bucket == timedelta(hours=1)
    by_model = {row["model"]: row for row in day.models}
    assert by_model["model-a"]["requests"] == 3 and by_model["model-b"]["requests"] == 3
    assert day.total["errors"] == 1 and day.total["cancelled"] == 1
    assert 400 <= by_model["model-b"]["ttft_ms_p50"] <= 500  # within its histogram bucket
    month = usage_selectors.usage_summary(since=history - timedelta(days=30), until=history)
    assert month.from_rollups and month.bucket == timedelta(days=1)
    assert month.total["requests"] == 82 == RequestRecord.objects.count()
    assert month.total["completion_tokens"] == 20 * 2 * (20 + 50) + 3
    assert len(month.series) == 31 and sum(p["requests"] for p in month.series) == 82
    only_b = usage_selectors.usage_summary(since=history - timedelta(days=30), until=history, model="model-b")
    assert [row["model"] for row in only_b.models] == ["model-b"]


def test_dashboard_needs_staff(client: Client) -> None:
    response = client.get("/dashboard/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    User.objects.create_user("someone", password="pw")
    client.login(username="someone", password="pw")
    assert client.get("/dashboard/").status_code == 302


@pytest.mark.parametrize("chosen", ["hour", "day", "7d", "30d"])
def test_dashboard_renders_charts_with_data(admin_client: Client, history: datetime, chosen: str) -> None:
    page = admin_client.get(f"/dashboard/?range={chosen}")
    assert page.status_code == 200
    html = page.content.decode()
    for chart in ("requests", "tokens", "ttft", "speed", "model-requests", "model-tokens"):
        points = int(html.split(f'data-chart="{chart}" data-points="')[1].split('"')[0])
        assert points > 0, chart
    assert "model-a" in html and "model-b" in html
    assert 'id="slowest"' in html and 'id="failed"' in html and "model_not_found" in html


def test_custom_range_and_model_filter(admin_client: Client, history: datetime) -> None:
    start = (history - timedelta(days=3)).date().isoformat()
    page = admin_client.get(f"/dashboard/?range=custom&start={start}&model=model-b")
    assert page.status_code == 200
    summary = page.context["summary"]
    assert [row["model"] for row in summary.models] == ["model-b"]
    assert page.context["since"].date().isoformat() == start
    broken = admin_client.get("/dashboard/?range=custom&start=garbage")
    assert broken.status_code == 200 and broken.context["range"] == "day"


def test_csv_export_holds_the_records_in_range(admin_client: Client, history: datetime) -> None:
    response = admin_client.get("/dashboard/export.csv?range=7d")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    in_range = RequestRecord.objects.filter(created_at__gte=history - timedelta(days=7)).count()
    assert len(rows) == in_range > 0
    assert {"model", "prompt_tokens", "completion_tokens", "ttft_ms", "status"} <= set(rows[0])


async def test_live_feed_pushes_finished_requests_to_staff() -> None:
    staff = await sync_to_async(User.objects.create_user)("staff", password="pw", is_staff=True)
    feed = WebsocketCommunicator(RequestFeedConsumer.as_asgi(), "/ws/dashboard/feed/")
    feed.scope["user"] = staff
    connected, _ = await feed.connect()
    assert connected
    record = await sync_to_async(make_record)(datetime.now(UTC), model="model-a")
    await recording.request_feed_publish(record)
    message = await feed.receive_json_from(timeout=5)
    assert (message["model"], message["status"], message["completion_tokens"]) == ("model-a", "ok", 20)
    await feed.disconnect()

    stranger = WebsocketCommunicator(RequestFeedConsumer.as_asgi(), "/ws/dashboard/feed/")
    stranger.scope["user"] = AnonymousUser()
    connected, code = await stranger.connect()
    assert not connected and code == 4403


def run_usage(*args: str) -> str:
    out = io.StringIO()
    call_command("usage", *args, stdout=out)
    return out.getvalue()


def test_usage_command_prints_the_summary(history: datetime) -> None:
    table = run_usage("--since", "7d")
    assert "model-a" in table and "model-b" in table and table.splitlines()[-1].startswith("total")
    report = json.loads(run_usage("--since", "30d", "--json"))
    assert set(report) == {"since", "until", "models", "keys", "total"}
    assert set(report["models"][0]) == {
        "model",
        "requests",
        "errors",
        "cancelled",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms_p50",
        "tokens_per_s_p50",
    }
    assert report["total"]["requests"] == 82
    only_a = json.loads(run_usage("--since", "1d", "--model", "model-a", "--json"))
    assert [row["model"] for row in only_a["models"]] == ["model-a"]


def test_usage_prune_keeps_the_daily_totals(history: datetime, tmp_path, monkeypatch) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"records": {"usage_retention_days": 7}}))
    monkeypatch.setenv("LLAMA_SERVER_CONFIG", str(config))
    before = DailyUsage.objects.count()
    assert run_usage("--prune").startswith("pruned ")
    assert not RequestRecord.objects.filter(created_at__lt=history - timedelta(days=7, minutes=1)).exists()
    assert DailyUsage.objects.count() == before
    month = usage_selectors.usage_summary(since=history - timedelta(days=30), until=history)
    assert month.total["requests"] == 82  # long ranges still see everything


def test_rollups_can_be_rebuilt_from_the_records(history: datetime) -> None:
    expected = {(row.day, row.model): (row.requests, row.completion_tokens) for row in DailyUsage.objects.all()}
    DailyUsage.objects.all().update(requests=0, completion_tokens=0)
    assert run_usage("--rebuild-rollups").startswith("rebuilt ")
    assert {(row.day, row.model): (row.requests, row.completion_tokens) for row in DailyUsage.objects.all()} == expected


def test_usage_command_rejects_a_bad_since() -> None:
    with pytest.raises(Exception, match="--since"):
        run_usage("--since", "lately")
