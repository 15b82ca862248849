"""The playground: staff chat with any model through the server's own API, signed in instead of
holding a key; their requests are recorded as the playground's, under their name. In Chromium:
an answer streams with its figures, Stop cancels the generation, another model can be chosen,
conversations export as JSON; a thinking model's thoughts fold above its answer and its tool
calls show as calls, and both go back with the next turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError
from django.test import AsyncClient

from inference.api import authentication
from inference.models import RequestRecord
from tests.browser import console_server, log_in, needs_chromium, screenshot, stub_fetch, stubbed_requests
from tests.conftest import SMOLLM2, DaphneServer, ServerFactory, wait_for

REQUIRED = {"require_api_key": True}
CONSOLE = {"X-Llamasite-Console": "playground"}
HELLO = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


async def signed_in(user: User | None) -> tuple[AsyncClient, str]:
    """A client that enforces CSRF like a browser, signed in as `user`, and its CSRF token."""
    client = AsyncClient(enforce_csrf_checks=True)
    if user is not None:
        await client.aforce_login(user)
    # Pages with a form set the CSRF cookie (the login page sends staff on to the admin).
    await client.get("/dashboard/playground/" if user is not None and user.is_staff else "/admin/login/")
    return client, client.cookies["csrftoken"].value


async def chat(client: AsyncClient, headers: dict[str, str]) -> Any:
    return await client.post("/v1/chat/completions", HELLO, content_type="application/json", headers=headers)


async def test_staff_chat_without_a_key_recorded_as_the_playground_s(use_config, admin_user: User) -> None:
    use_config(server=REQUIRED)
    client, token = await signed_in(admin_user)
    page = await client.get("/dashboard/playground/")
    assert page.status_code == 200 and SMOLLM2 in page.content.decode()
    response = await chat(client, {**CONSOLE, "X-CSRFToken": token})
    assert response.status_code == 200, response.content
    record = await RequestRecord.objects.aget()
    assert (record.source, record.console_user, record.api_key, record.status) == ("playground", "admin", "", "ok")


async def test_console_requests_need_a_signed_in_staff_user_and_the_csrf_token(use_config, admin_user: User) -> None:
    use_config(server=REQUIRED)
    staff, token = await signed_in(admin_user)
    member = await User.objects.acreate_user("member", password="x")
    not_staff, member_token = await signed_in(member)
    anonymous, anonymous_token = await signed_in(None)
    refusals = [
        (staff, CONSOLE),  # no CSRF token
        (staff, {**CONSOLE, "X-CSRFToken": "x" * 32}),
        (not_staff, {**CONSOLE, "X-CSRFToken": member_token}),
        (anonymous, {**CONSOLE, "X-CSRFToken": anonymous_token}),
    ]
    for client, headers in refusals:
        response = await chat(client, headers)
        assert response.status_code == 403, response.content
        assert response.json()["error"]["type"] == "permission_error"
    unknown_page = await chat(staff, {"X-Llamasite-Console": "elsewhere", "X-CSRFToken": token})
    assert unknown_page.status_code == 400 and "X-Llamasite-Console" in unknown_page.json()["error"]["message"]
    assert (await chat(staff, {})).status_code == 401  # without the header it is an API client: key required
    assert not await RequestRecord.objects.aexists()


@pytest.mark.slow
async def test_a_console_request_while_the_database_is_away_is_a_503_then_recovers(
    use_config, admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_config(server=REQUIRED)
    client, token = await signed_in(admin_user)
    headers = {**CONSOLE, "X-CSRFToken": token}

    def unreachable(request: Any) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(authentication, "_signed_in_user", unreachable)
    response = await chat(client, headers)
    assert response.status_code == 503 and response.json()["error"]["code"] == "database_unavailable"
    monkeypatch.undo()
    assert (await chat(client, headers)).status_code == 200


def test_the_playground_page_is_for_staff_only(client, django_user_model) -> None:
    response = client.get("/dashboard/playground/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.force_login(django_user_model.objects.create_user("member", password="x"))
    assert client.get("/dashboard/playground/").status_code == 302


# --- in Chromium ------------------------------------------------------------------------------

SECOND = "smollm2-copy"


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with console_server(server_factory, "playground", names=(SMOLLM2, SECOND), server=REQUIRED) as server:
        yield server


def ask(browser: Any, text: str) -> Any:
    """Send `text`; the answer's bubble."""
    from selenium.webdriver.common.by import By

    answers = len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant"))
    browser.find_element(By.ID, "prompt").send_keys(text)
    browser.find_element(By.ID, "send").click()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant")) > answers, 20)
    return browser.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1]


def set_field(browser: Any, field_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, field_id)
    field.clear()
    field.send_keys(value)


@needs_chromium
def test_playground_streams_stops_and_switches_models_in_chromium(
    server: DaphneServer, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    downloads = tmp_path
    log_in(browser, server.url, "/dashboard/playground/")
    wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes", 20)
    options = [option.text for option in Select(browser.find_element(By.ID, "model")).options]
    assert f"{SMOLLM2} · unloaded" in options and f"{SECOND} · unloaded" in options, options
    browser.find_element(By.ID, "system").send_keys("You are brief.")
    set_field(browser, "temperature", "0")
    set_field(browser, "seed", "7")
    set_field(browser, "max-tokens", "12")

    answer = ask(browser, "Name a colour.")
    wait_for(lambda: answer.find_elements(By.CSS_SELECTOR, ".stats"), 60)
    stats = answer.find_element(By.CSS_SELECTOR, ".stats")
    assert answer.find_element(By.CSS_SELECTOR, ".text").text.strip()
    assert int(stats.get_attribute("data-prompt-tokens")) > 5
    assert int(stats.get_attribute("data-completion-tokens")) > 0
    assert float(stats.get_attribute("data-ttft-ms")) > 0
    assert "TTFT" in stats.text and "tokens/s" in stats.text

    # A long answer, stopped once it has begun: the server cancels the generation.
    set_field(browser, "max-tokens", "1500")
    long_answer = ask(browser, "Write a very long story about a lighthouse.")
    wait_for(lambda: len(long_answer.find_element(By.CSS_SELECTOR, ".text").text) > 10, 60)
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: long_answer.find_elements(By.CSS_SELECTOR, ".stats"), 20)
    assert long_answer.find_element(By.CSS_SELECTOR, ".stats").get_attribute("data-finish-reason") == "stopped"

    def record_of_the_stopped_answer() -> list[tuple]:
        return server.rows(
            "SELECT status, source, console_user, api_key, completion_tokens FROM inference_requestrecord "
            "WHERE model = ? ORDER BY id",
            SMOLLM2,
        )

    wait_for(lambda: len(record_of_the_stopped_answer()) == 2, 20)
    first, stopped = record_of_the_stopped_answer()
    assert first[:4] == ("ok", "playground", "admin", "")
    assert stopped[:4] == ("cancelled", "playground", "admin", "") and stopped[4] < 1500

    # Another model, in the same conversation.
    set_field(browser, "max-tokens", "8")
    Select(browser.find_element(By.ID, "model")).select_by_value(SECOND)
    third = ask(browser, "And another?")
    wait_for(lambda: third.find_elements(By.CSS_SELECTOR, ".stats"), 60)
    assert SECOND in third.find_element(By.CSS_SELECTOR, ".stats").text
    picker = Select(browser.find_element(By.ID, "model"))
    wait_for(lambda: f"{SECOND} · loaded" in [option.text for option in picker.options], 20)  # live, no reload
    wait_for(
        lambda: server.rows("SELECT source FROM inference_requestrecord WHERE model = ?", SECOND) == [("playground",)],
        20,
    )

    # JSON mode: the answer is held to JSON by the server's grammar.
    browser.find_element(By.ID, "json-mode").click()
    set_field(browser, "max-tokens", "24")
    fourth = ask(browser, "Describe a cat as JSON.")
    wait_for(lambda: fourth.find_elements(By.CSS_SELECTOR, ".stats"), 60)
    assert fourth.find_element(By.CSS_SELECTOR, ".text").text.lstrip().startswith("{")
    browser.find_element(By.ID, "json-mode").click()

    saved = json.loads(browser.execute_script("return localStorage.getItem('llamasite.playground.conversations')"))
    assert [message["role"] for message in saved[0]["messages"]] == ["user", "assistant"] * 4
    assert saved[0]["system"] == "You are brief." and saved[0]["model"] == SECOND
    browser.refresh()  # the conversation is still there
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant")) == 4, 20)
    assert browser.find_element(By.ID, "max-tokens").get_attribute("value") == "24"  # and the settings
    screenshot(browser, "playground")

    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.find_element(By.ID, "export").click()
    exported = downloads / "llamasite-playground.json"
    wait_for(exported.exists, 20)
    assert json.loads(exported.read_text()) == saved


THOUGHT = ["The user wants the weather. ", "I should call <b>get_weather</b>."]
ARGUMENTS = ['{"city": "Par', 'is", "unit": "celsius"}']
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "".join(ARGUMENTS)}}


def sse(*deltas: dict[str, Any], finish_reason: str, reasoning_tokens: int) -> list[str]:
    """A chat completion's stream, one event a delta, then its finish and its usage."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 40,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }
    ends = [chunk({}, finish_reason), f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n", "data: [DONE]\n\n"]
    return [chunk({"role": "assistant", "content": ""}), *map(chunk, deltas), *ends]


def parts(box: Any) -> list[str]:
    """The classes of a message box's children, in order."""
    return box.parent.execute_script("return [...arguments[0].children].map((child) => child.className)", box)


def text_of(box: Any, selector: str) -> str:
    """The text of `selector` in `box`, shown or folded away."""
    from selenium.webdriver.common.by import By

    return box.find_element(By.CSS_SELECTOR, selector).get_attribute("textContent")


@needs_chromium
def test_thinking_folds_above_the_answer_and_tool_calls_show_as_calls_in_chromium(
    server: DaphneServer, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, server.url, "/dashboard/playground/")
    wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes", 20)
    browser.find_element(By.ID, "new-conversation").click()
    thinking = [{"reasoning_content": part} for part in THOUGHT]
    call_opens = {"tool_calls": [{"index": 0, **CALL, "function": {"name": "get_weather", "arguments": ""}}]}
    call_goes_on = [{"tool_calls": [{"index": 0, "function": {"arguments": part}}]} for part in ARGUMENTS]
    stream = sse(*thinking, call_opens, *call_goes_on, finish_reason="tool_calls", reasoning_tokens=17)
    # The second thought cut in two by the network; the stream held before the call, while it thinks.
    calls = [*stream[:2], stream[2][:20], stream[2][20:], None, *stream[3:]]
    answers = sse(
        {"reasoning_content": "Sunny, say so."},
        {"content": "It is sunny in Paris."},
        finish_reason="stop",
        reasoning_tokens=6,
    )
    stub_fetch(browser, "/v1/chat/completions", [calls, answers])

    first = ask(browser, "Weather in Paris?")
    thought = "".join(THOUGHT)
    wait_for(lambda: first.find_elements(By.CSS_SELECTOR, ".thought") and text_of(first, ".thought") == thought, 20)
    summary = first.find_element(By.CSS_SELECTOR, ".thinking summary")
    assert summary.text == "Thinking…"
    assert first.find_element(By.CSS_SELECTOR, ".thinking").get_attribute("open") is not None  # shown as it comes
    browser.execute_script("window.resumeStub()")
    wait_for(lambda: first.find_elements(By.CSS_SELECTOR, ".stats"), 20)

    assert parts(first) == ["thinking", "text", "tool-calls", "stats"]  # thoughts above the answer, calls after
    assert first.find_element(By.CSS_SELECTOR, ".thinking").get_attribute("open") is None
    assert summary.text == "Thought for 17 tokens"
    assert text_of(first, ".thinking .thought") == thought  # as text: the markup is not the page's
    assert not first.find_elements(By.CSS_SELECTOR, "b")
    assert text_of(first, ".text") == ""  # nothing of the call in the answer
    assert text_of(first, ".tool-call .name") == "get_weather"
    arguments = text_of(first, ".tool-call .arguments")
    assert json.loads(arguments) == {"city": "Paris", "unit": "celsius"} and "\n  " in arguments  # pretty-printed
    stats = first.find_element(By.CSS_SELECTOR, ".stats")
    assert stats.get_attribute("data-finish-reason") == "tool_calls" and "(17 thinking)" in stats.text

    second = ask(browser, "So?")
    wait_for(lambda: second.find_elements(By.CSS_SELECTOR, ".stats"), 20)
    assert parts(second) == ["thinking", "text", "stats"]
    assert text_of(second, ".text") == "It is sunny in Paris."
    assert second.find_element(By.CSS_SELECTOR, ".thinking").get_attribute("open") is None
    assert text_of(second, ".thinking summary") == "Thought for 6 tokens"

    sent = stubbed_requests(browser)
    assert sent[0]["stream_options"] == {"include_usage": True}
    assert sent[1]["messages"][-3:] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning_content": thought},
        {"role": "user", "content": "So?"},
    ]

    browser.refresh()  # the conversation as it was kept: the thinking folded, the call a call
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant")) == 2, 20)
    kept = browser.find_elements(By.CSS_SELECTOR, ".message.assistant")[0]
    assert parts(kept) == ["thinking", "text", "tool-calls", "stats"]
    assert kept.find_element(By.CSS_SELECTOR, ".thinking").get_attribute("open") is None
    assert text_of(kept, ".thinking .thought") == thought
    assert text_of(kept, ".tool-call .name") == "get_weather"
    violations = [
        entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]
    ]
    assert not violations, violations
