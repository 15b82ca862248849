"""Several server processes, each owning its models, sharing one PostgreSQL and one Redis: the
dashboard, the live feed and `manage.py usage` of any of them see the requests of all."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import PROJECT_DIR, DaphneServer, free_port, link_model, server_env, start_server, write_config
from tests.services import migrate, query_rows, with_database_name

PASSWORD = "scale-out-test-password"


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path, postgres_url: str, redis_url: str,
    monkeypatch_module: pytest.MonkeyPatch,
) -> Iterator[list[DaphneServer]]:
    """Two servers ("gpu0" serving alpha, "gpu1" serving beta) on one database and one Redis."""
    query_rows(with_database_name(postgres_url, "postgres"), "CREATE DATABASE scaleout")
    database_url = with_database_name(postgres_url, "scaleout")
    migrate(database_url)
    monkeypatch_module.setenv("REDIS_URL", redis_url)
    started = []
    for instance, model in (("gpu0", "alpha"), ("gpu1", "beta")):
        root = tmp_path_factory.mktemp(instance)
        link_model(smollm2_file, root / "models", model)
        config = write_config(root, server={"instance_name": instance}, default_model=model, n_ctx=512)
        started.append(start_server(config, root / "server.log", database_url, "--port", str(free_port())))
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def staff(servers: list[DaphneServer]) -> httpx.Client:
    """A client of gpu0 logged in to the Django admin as a new superuser (sessions live in the
    shared database)."""
    server = servers[0]
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"],
        cwd=PROJECT_DIR,
        env={**server_env(server.config, server.database_url), "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        check=True,
        capture_output=True,
    )
    client = httpx.Client(base_url=server.url, timeout=30)
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    client.post("/admin/login/", data={"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert "sessionid" in client.cookies
    return client


def test_each_server_serves_its_own_models(servers: list[DaphneServer]) -> None:
    for server, model in zip(servers, ("alpha", "beta")):
        assert [entry["id"] for entry in httpx.get(f"{server.url}/v1/models").json()["data"]] == [model]


def test_dashboard_feed_and_usage_see_every_server(servers: list[DaphneServer], staff: httpx.Client) -> None:
    gpu0, gpu1 = servers
    port = gpu0.url.rsplit(":", 1)[1]
    with connect(
        f"ws://127.0.0.1:{port}/ws/dashboard/feed/",
        additional_headers={"Cookie": f"sessionid={staff.cookies['sessionid']}", "Origin": gpu0.url},
    ) as feed:
        assert gpu1.chat("beta").status_code == 200  # finished on the other process…
        pushed = json.loads(feed.recv(timeout=30))  # …and announced through Redis
    assert (pushed["instance"], pushed["model"]) == ("gpu1", "beta")
    assert gpu0.chat("alpha").status_code == 200

    page = staff.get("/dashboard/", params={"range": "hour"})
    assert page.status_code == 200
    assert "alpha" in page.text and "beta" in page.text
    assert {row[0] for row in gpu0.rows("SELECT DISTINCT instance FROM inference_requestrecord")} == {"gpu0", "gpu1"}

    usage = subprocess.run(
        [sys.executable, "manage.py", "usage", "--since", "1h", "--json"],
        cwd=PROJECT_DIR, env=server_env(gpu1.config, gpu1.database_url), check=True, capture_output=True, text=True,
    )
    models = {row["model"]: row["requests"] for row in json.loads(usage.stdout)["models"]}
    assert models == {"alpha": 1, "beta": 1}


def test_the_admin_acts_on_its_own_servers_models_only(servers: list[DaphneServer], staff: httpx.Client) -> None:
    gpu0, _ = servers
    changelist = "/admin/inference/discoveredmodel/"
    page = staff.get(changelist)
    assert "alpha" in page.text and "beta" in page.text  # every server's models are listed
    ids = dict(gpu0.rows("SELECT name, id FROM inference_discoveredmodel"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    done = staff.post(
        changelist,
        data={"action": "load_now", "_selected_action": [ids["alpha"], ids["beta"]], "csrfmiddlewaretoken": token},
        follow_redirects=True,
    )
    assert "Alpha is loaded." in done.text  # the admin capitalises messages
    assert "Beta is served by gpu1, not by this server (gpu0)" in done.text
    assert gpu0.loaded() == ["alpha"]
