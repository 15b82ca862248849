"""Images in the playground, in Chromium: offered only for a model that takes them (its
`input_modalities`), attached from a file or pasted into the message, shown as thumbnails to
remove before sending, refused on the page beyond the server's limits; sent as the chat API's
`image_url` parts after the text, shown in the conversation and kept with it. A model without a
projector refuses them: the page shows the server's 400, and that turn is not sent again."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    console_server,
    log_in,
    needs_chromium,
    screenshot,
    spy_fetch,
    stub_fetch,
    stubbed_requests,
)
from tests.conftest import SMOLLM2, DaphneServer, ServerFactory, wait_for
from tests.gguf_files import write_projector
from tests.test_playground import ask, set_field, sse

VISION = "smollm2-vision"  # SmolLM2 with the tests' tiny projector beside it
MAX_IMAGE_BYTES = 4096


def png(width: int, height: int, *, level: int = 9) -> bytes:
    """An RGB PNG of a gradient (at zlib `level` 0, about 3 bytes a pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\0" + bytes(value for x in range(width) for value in (x * 40 % 256, y * 40 % 256, 128)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, level)) + chunk(b"IEND", b"")
    )


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


SMALL, OTHER = png(8, 8), png(4, 6)
LARGE = png(48, 48, level=0)  # ~7 KB: over MAX_IMAGE_BYTES


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    def projector_beside_vision(root: Path) -> None:
        write_projector(root / "models" / f"mmproj-{VISION}.gguf")

    with console_server(
        server_factory,
        "playground-images",
        names=(SMOLLM2, VISION),
        server={"max_image_bytes": MAX_IMAGE_BYTES},
        prepare=projector_beside_vision,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("images")
    written = {"small.png": SMALL, "large.png": LARGE}
    for name, image in written.items():
        (directory / name).write_bytes(image)
    return {name: directory / name for name in written}


def open_playground(browser: Any, server: DaphneServer) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, server.url, "/dashboard/playground/")
    wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes", 20)
    browser.find_element(By.ID, "new-conversation").click()


def choose_model(browser: Any, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "model")).select_by_value(name)


def attach_file(browser: Any, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "attach-file").send_keys(str(path))


def paste(browser: Any, image: bytes, name: str = "image.png") -> None:
    """Paste `image` (a PNG) into the message box, as a clipboard holding only that image."""
    browser.execute_script(
        """
        const [data, name] = arguments;
        const clipboard = new DataTransfer();
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        clipboard.items.add(new File([bytes], name, { type: "image/png" }));
        const pasted = new ClipboardEvent("paste", { clipboardData: clipboard, bubbles: true, cancelable: true });
        document.getElementById("prompt").dispatchEvent(pasted);
        """,
        base64.b64encode(image).decode(),
        name,
    )


def thumbnails(browser: Any) -> list[str]:
    """The sources of the pending images' thumbnails."""
    from selenium.webdriver.common.by import By

    return [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#attachments .attachment img")]


def attach_error(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    shown = browser.find_element(By.ID, "attach-error")
    return shown.text if shown.is_displayed() else ""


def images_in(bubble: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [img.get_attribute("src") for img in bubble.find_elements(By.CSS_SELECTOR, ".images img")]


def no_csp_violations(browser: Any) -> None:
    violations = [
        entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]
    ]
    assert not violations, violations


@needs_chromium
def test_images_are_attached_shown_removed_and_sent_as_image_parts_in_chromium(
    server: DaphneServer, browser: Any, files: dict[str, Path]
) -> None:
    from selenium.webdriver.common.by import By

    open_playground(browser, server)
    attach = browser.find_element(By.ID, "attach")
    # The default model has no projector: nothing to attach, and a pasted image is not taken.
    assert not attach.is_enabled() and attach.get_attribute("title") == f"{SMOLLM2} takes text only"
    assert not browser.find_element(By.ID, "attach-file").is_enabled()
    paste(browser, SMALL)
    wait_for(lambda: attach_error(browser), 10)
    assert attach_error(browser) == f"{SMOLLM2} takes text only: image.png was not attached."
    assert thumbnails(browser) == []

    choose_model(browser, VISION)
    assert attach.is_enabled() and "Attach an image" in attach.get_attribute("title")
    attach_file(browser, files["small.png"])
    wait_for(lambda: thumbnails(browser) == [data_url(SMALL)], 10)
    assert attach_error(browser) == ""  # the last refusal is gone with a new attachment
    browser.find_element(By.CSS_SELECTOR, "#attachments .remove").click()
    assert thumbnails(browser) == []

    # Over server.max_image_bytes: refused on the page, before any request.
    attach_file(browser, files["large.png"])
    wait_for(lambda: attach_error(browser), 10)
    assert attach_error(browser) == (
        f"large.png is {len(LARGE) / 1024:.1f} KiB, larger than the server takes (server.max_image_bytes: 4.0 KiB)."
    )
    assert thumbnails(browser) == []

    attach_file(browser, files["small.png"])
    paste(browser, OTHER, "pasted.png")
    wait_for(lambda: len(thumbnails(browser)) == 2, 10)
    assert thumbnails(browser) == [data_url(SMALL), data_url(OTHER)]
    image_parts = [
        {"type": "image_url", "image_url": {"url": data_url(SMALL)}},
        {"type": "image_url", "image_url": {"url": data_url(OTHER)}},
    ]

    # To a model without a projector (attached before switching): the server's 400 is the answer.
    spy_fetch(browser, "/v1/chat/completions")
    choose_model(browser, SMOLLM2)
    assert not attach.is_enabled()
    answer = ask(browser, "")
    wait_for(lambda: answer.find_elements(By.CSS_SELECTOR, ".stats"), 30)
    assert "error" in answer.get_attribute("class").split()
    assert answer.find_element(By.CSS_SELECTOR, ".text").text == (
        f"model {SMOLLM2} takes text only (no multimodal projector): messages[0].content[0]"
    )
    assert stubbed_requests(browser)[0]["messages"] == [{"role": "user", "content": image_parts}]
    assert thumbnails(browser) == []  # sent: the composer is empty again

    # To the model that sees: a real answer; the refused turn before it is not sent again.
    choose_model(browser, VISION)
    attach_file(browser, files["small.png"])
    paste(browser, OTHER, "pasted.png")
    wait_for(lambda: len(thumbnails(browser)) == 2, 10)
    screenshot(browser, "playground-images")
    set_field(browser, "max-tokens", "4")
    answer = ask(browser, "What is in these pictures?")
    wait_for(lambda: answer.find_elements(By.CSS_SELECTOR, ".stats"), 60)
    assert "error" not in answer.get_attribute("class").split()
    assert answer.find_element(By.CSS_SELECTOR, ".text").text
    sent = stubbed_requests(browser)[1]
    assert sent["model"] == VISION
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is in these pictures?"}, *image_parts]}
    ]
    question = browser.find_elements(By.CSS_SELECTOR, ".message.user")[-1]
    assert images_in(question) == [data_url(SMALL), data_url(OTHER)]
    assert question.find_element(By.CSS_SELECTOR, ".text").text == "What is in these pictures?"
    no_csp_violations(browser)


ANSWER = sse({"content": "A small square."}, finish_reason="stop", reasoning_tokens=0)


@needs_chromium
def test_sent_images_stay_in_the_conversation_and_go_back_with_later_turns_in_chromium(
    server: DaphneServer, browser: Any, files: dict[str, Path]
) -> None:
    from selenium.webdriver.common.by import By

    open_playground(browser, server)
    choose_model(browser, VISION)
    stub_fetch(browser, "/v1/chat/completions", [ANSWER, ANSWER])
    attach_file(browser, files["small.png"])
    wait_for(lambda: len(thumbnails(browser)) == 1, 10)
    first = ask(browser, "What is this?")
    wait_for(lambda: first.find_elements(By.CSS_SELECTOR, ".stats"), 20)
    second = ask(browser, "And its colour?")
    wait_for(lambda: second.find_elements(By.CSS_SELECTOR, ".stats"), 20)
    image_turn = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": data_url(SMALL)}},
        ],
    }
    assert stubbed_requests(browser)[1]["messages"] == [
        image_turn,
        {"role": "assistant", "content": "A small square."},
        {"role": "user", "content": "And its colour?"},
    ]

    browser.refresh()  # kept with the conversation, in this browser
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant")) == 2, 20)
    assert images_in(browser.find_elements(By.CSS_SELECTOR, ".message.user")[0]) == [data_url(SMALL)]
    assert not browser.find_element(By.ID, "storage-note").is_displayed()

    # A browser whose storage is full keeps the conversation without its images, and says so.
    browser.find_element(By.ID, "new-conversation").click()
    browser.execute_script(
        """
        const setItem = Storage.prototype.setItem;
        Storage.prototype.setItem = function (key, value) {
          if (value.includes("data:image/")) throw new DOMException("full", "QuotaExceededError");
          return setItem.call(this, key, value);
        };
        """
    )
    choose_model(browser, VISION)
    stub_fetch(browser, "/v1/chat/completions", [ANSWER, ANSWER])
    attach_file(browser, files["small.png"])
    wait_for(lambda: len(thumbnails(browser)) == 1, 10)
    answer = ask(browser, "What is this?")
    wait_for(lambda: answer.find_elements(By.CSS_SELECTOR, ".stats"), 20)
    assert browser.find_element(By.ID, "storage-note").is_displayed()
    assert images_in(browser.find_elements(By.CSS_SELECTOR, ".message.user")[-1]) == [data_url(SMALL)]  # until a reload
    browser.refresh()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant")) == 1, 20)
    question = browser.find_element(By.CSS_SELECTOR, ".message.user")
    assert images_in(question) == []
    assert question.find_element(By.CSS_SELECTOR, ".image-gone").text == "(small.png: not kept in this browser)"
    stub_fetch(browser, "/v1/chat/completions", [ANSWER])
    later = ask(browser, "Again?")
    wait_for(lambda: later.find_elements(By.CSS_SELECTOR, ".stats"), 20)
    assert stubbed_requests(browser)[0]["messages"][0] == {"role": "user", "content": "What is this?"}
    no_csp_violations(browser)
