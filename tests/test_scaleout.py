"""Several server processes, each owning its models, sharing one PostgreSQL and one Redis: the
dashboard, the live feed and `manage.py usage` of any of them see the requests of all; the admin
acts on its own server's models; an API key's requests per minute are counted across servers; a
server relays requests for the models it lacks to its peers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from django.test import AsyncClient
from websockets.sync.client import connect

from tests.conftest import (
    HI,
    SMOLLM2,
    DaphneServer,
    ServerFactory,
    free_port,
    wait_for,
)
from tests.database_servers import migrate, query_rows, with_database_name

PASSWORD = "scale-out-test-password"


@pytest.fixture(scope="module")
def servers(server_factory: ServerFactory, postgres_url: str, redis_url: str) -> Iterator[list[DaphneServer]]:
    """Two servers ("gpu0" serving alpha, "gpu1" serving beta) on one database and one Redis."""
    query_rows(with_database_name(postgres_url, "postgres"), "CREATE DATABASE scaleout")
    database_url = with_database_name(postgres_url, "scaleout")
    migrate(database_url)
    ports = [free_port(), free_port()]
    # gpu0 passes requests for the models it lacks to gpu1 (server.peers); gpu1 has no peers.
    peers = ([f"http://127.0.0.1:{ports[1]}"], [])
    with ExitStack() as running:
        yield [
            running.enter_context(
                server_factory(
                    instance,
                    names=(model,),
                    port=port,
                    database=database_url,
                    env={"REDIS_URL": redis_url},
                    server={"instance_name": instance, "peers": its_peers},
                    default_model=model,
                    n_ctx=512,
                )
            )
            for instance, model, port, its_peers in zip(("gpu0", "gpu1"), ("alpha", "beta"), ports, peers)
        ]


@pytest.fixture(scope="module")
def staff(servers: list[DaphneServer]) -> httpx.Client:
    """A client of gpu0 logged in to the Django admin as a new superuser (sessions live in the
    shared database)."""
    server = servers[0]
    server.create_superuser(PASSWORD)
    client = httpx.Client(base_url=server.url, timeout=30)
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    client.post("/admin/login/", data={"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert "sessionid" in client.cookies
    return client


def model_ids(server: DaphneServer) -> list[str]:
    return [entry["id"] for entry in httpx.get(f"{server.url}/v1/models").json()["data"]]


def test_each_server_owns_its_models_and_lists_its_peers_too(servers: list[DaphneServer]) -> None:
    gpu0, gpu1 = servers
    assert model_ids(gpu1) == ["beta"]
    assert model_ids(gpu0) == ["alpha", "beta"]


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

    usage = gpu1.manage("usage", "--since", "1h", "--json")
    assert usage.returncode == 0, usage.stderr
    models = {row["model"]: row["requests"] for row in json.loads(usage.stdout)["models"]}
    assert set(models) == {"alpha", "beta"} and min(models.values()) >= 1


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


def instances_of(server: DaphneServer, completion_id: str) -> list[tuple[str, str]]:
    return server.rows("SELECT instance, status FROM inference_requestrecord WHERE completion_id = ?", completion_id)


def test_an_api_keys_requests_per_minute_are_counted_across_servers(servers: list[DaphneServer]) -> None:
    created = servers[0].manage("apikey", "create", "shared-limit", "--rpm", "2")
    assert created.returncode == 0, created.stderr
    key = {"Authorization": f"Bearer {created.stdout.strip()}"}

    def post(server: DaphneServer, model: str) -> httpx.Response:
        body = {"model": model, "messages": HI, "max_tokens": 1}
        return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=key, timeout=60)

    assert [post(servers[0], "alpha").status_code, post(servers[1], "beta").status_code] == [200, 200]
    refused = post(servers[0], "alpha")  # its third request this minute, the first on gpu0 alone
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
    assert 0 < int(refused.headers["Retry-After"]) <= 60


def test_a_peer_answers_for_the_models_a_server_lacks(servers: list[DaphneServer]) -> None:
    gpu0, gpu1 = servers
    answer = gpu0.chat("beta")
    assert answer.status_code == 200 and answer.json()["model"] == "beta"
    wait_for(lambda: instances_of(gpu0, answer.json()["id"]) == [("gpu1", "ok")])  # recorded once, by gpu1

    body = {"model": "beta", "messages": HI, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{gpu0.url}/v1/chat/completions", json=body, timeout=60) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["model"] == "beta"
    assert httpx.get(f"{gpu0.url}/v1/models/beta").json()["id"] == "beta"

    unknown = gpu0.chat("gamma")  # nobody has it: the 404 is gpu0's own, after asking gpu1 once
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_a_peer_answers_anthropic_messages_for_the_models_a_server_lacks(servers: list[DaphneServer]) -> None:
    gpu0, gpu1 = servers
    created = gpu0.manage("apikey", "create", "claude-code")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    headers = {"x-api-key": secret, "anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    body = {"model": "beta", "messages": HI, "max_tokens": 2}
    answer = httpx.post(f"{gpu0.url}/v1/messages?beta=true", json=body, headers=headers, timeout=60)
    assert answer.status_code == 200 and answer.json()["model"] == "beta"
    row = "SELECT instance, endpoint, api_key FROM inference_requestrecord WHERE completion_id = ?"
    wait_for(
        lambda: gpu0.rows(row, answer.json()["id"]) == [("gpu1", "/v1/messages", secret[:11])]
    )  # the key went along

    unknown = httpx.post(f"{gpu0.url}/v1/messages", json={**body, "model": "gamma"}, headers=headers, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    # gpu1's Anthropic-shaped 404 was read as "no such model" (not relayed): both servers recorded one.
    refused = "SELECT instance FROM inference_requestrecord WHERE model = 'gamma' AND endpoint = '/v1/messages'"
    wait_for(lambda: sorted(gpu0.rows(refused)) == [("gpu0",), ("gpu1",)])


def test_a_client_hanging_up_on_a_relayed_stream_stops_the_peer(servers: list[DaphneServer]) -> None:
    gpu0, gpu1 = servers
    body = {"model": "beta", "messages": HI, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{gpu0.url}/v1/chat/completions", json=body, timeout=60) as streamed:
        lines = streamed.iter_lines()
        completion_id = json.loads(next(line for line in lines if line.startswith("data: "))[6:])["id"]
    wait_for(lambda: instances_of(gpu1, completion_id) == [("gpu1", "cancelled")])
    wait_for(
        lambda: gpu1.loaded() == ["beta"] and httpx.get(f"{gpu1.url}/health").json()["models"]["beta"]["in_flight"] == 0
    )


async def test_a_peer_that_does_not_answer_leaves_this_server_serving(
    use_config, caplog: pytest.LogCaptureFixture
) -> None:
    use_config(server={"peers": [f"http://127.0.0.1:{free_port()}"]})  # nothing listens there
    client = AsyncClient()
    listed = await client.get("/v1/models")
    assert [model["id"] for model in listed.json()["data"]] == [SMOLLM2]
    missing = await client.post(
        "/v1/chat/completions", {"model": "elsewhere", "messages": HI}, content_type="application/json"
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert "did not answer" in caplog.text and "did not list its models" in caplog.text
