"""The Django admin: models with load/unload actions and saved settings; read-only history."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import Client

from inference.models import DiscoveredModel, LoadEvent, RequestRecord
from inference.runtime.pool import model_pool
from inference.services.models import discovered_models_sync
from tests.conftest import SMOLLM2
from tests.record_factory import make_record

CHANGELIST = "/admin/inference/discoveredmodel/"


@pytest.fixture
def synced(use_config) -> DiscoveredModel:
    discovered_models_sync(models=model_pool().catalog.available())
    return DiscoveredModel.objects.get(name=SMOLLM2)


def action(client: Client, name: str, row: DiscoveredModel) -> list[str]:
    response = client.post(CHANGELIST, {"action": name, "_selected_action": [row.pk]}, follow=True)
    assert response.status_code == 200
    return [str(message) for message in response.context["messages"]]


def test_staff_login_is_required(client: Client, synced: DiscoveredModel) -> None:
    for path in (CHANGELIST, "/admin/inference/loadevent/", "/admin/inference/requestrecord/"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_models_list_shows_size_quantisation_usage_and_state(admin_client: Client, synced: DiscoveredModel) -> None:
    make_record(datetime.now(UTC), model=SMOLLM2, prompt_tokens=7, completion_tokens=5)
    make_record(datetime.now(UTC), model=SMOLLM2, prompt_tokens=3, completion_tokens=5)
    page = admin_client.get(CHANGELIST)
    assert page.status_code == 200
    html = page.content.decode()
    assert SMOLLM2 in html and "Q4_1" in html and "93.8\xa0MB" in html
    assert "135 M" in admin_client.get(f"{CHANGELIST}{synced.pk}/change/").content.decode()  # on its page
    row = page.context["cl"].result_list[0]
    assert (row.request_total, row.prompt_total + row.completion_total) == (2, 20)
    assert row.last_used_at is not None
    assert 'alt="False"' in html  # not loaded


def test_load_and_unload_actions_act_on_the_manager(admin_client: Client, synced: DiscoveredModel) -> None:
    assert action(admin_client, "load_now", synced) == [f"{SMOLLM2} is loaded."]
    assert model_pool().loaded_models() == [SMOLLM2]
    assert 'alt="True"' in admin_client.get(CHANGELIST).content.decode()
    assert action(admin_client, "unload_now", synced) == [f"{SMOLLM2} is unloaded."]
    assert model_pool().loaded_models() == []
    assert action(admin_client, "unload_now", synced) == [f"{SMOLLM2} was not loaded."]
    reasons = list(LoadEvent.objects.order_by("id").values_list("kind", "reason"))
    assert reasons == [("load", "admin_ui"), ("unload", "admin_ui")]


def test_saved_settings_apply_at_the_next_load(admin_client: Client, synced: DiscoveredModel) -> None:
    change = f"{CHANGELIST}{synced.pk}/change/"
    form = admin_client.get(change)
    assert form.status_code == 200 and 'name="n_ctx"' in form.content.decode()
    response = admin_client.post(change, {"n_ctx": "512", "n_gpu_layers": "", "idle_timeout": "-1", "pinned": "true"})
    assert response.status_code == 302, response.content
    action(admin_client, "load_now", synced)
    settings = LoadEvent.objects.filter(kind="load").latest("id").settings
    assert settings["n_ctx"] == 512
    assert model_pool().status()[SMOLLM2].pinned is True
    invalid = admin_client.post(change, {"n_ctx": "", "n_gpu_layers": "-5", "idle_timeout": "", "pinned": "unknown"})
    assert invalid.status_code == 200 and "greater than or equal to -1" in invalid.content.decode()


@pytest.mark.parametrize("model", [LoadEvent, RequestRecord])
def test_history_is_read_only_with_filters_and_search(admin_client: Client, synced: DiscoveredModel, model) -> None:
    make_record(datetime.now(UTC), model=SMOLLM2)
    action(admin_client, "load_now", synced)
    base = f"/admin/inference/{model._meta.model_name}/"
    row = model.objects.first()
    assert admin_client.get(base).status_code == 200
    assert admin_client.get(f"{base}?q={SMOLLM2}").status_code == 200
    assert admin_client.get(f"{base}?model={SMOLLM2}").status_code == 200
    today = datetime.now(UTC)
    assert admin_client.get(f"{base}?created_at__year={today.year}").status_code == 200
    assert admin_client.get(f"{base}add/").status_code == 403
    assert admin_client.post(f"{base}{row.pk}/delete/").status_code == 403
    view = admin_client.get(f"{base}{row.pk}/change/")
    assert view.status_code == 200 and 'name="_save"' not in view.content.decode()
    assert admin_client.post(f"{base}{row.pk}/change/", {}).status_code == 403
    assert model.objects.filter(pk=row.pk).exists()


def test_admin_static_files_are_served(client: Client, synced: DiscoveredModel) -> None:
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/css")
