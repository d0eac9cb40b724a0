"""The chat page and the arena in a real headless browser (Debian's chromium, driven by selenium).

Skipped, saying why, where selenium, chromium or chromedriver is missing. With
MINIGPT_SERVE_SCREENSHOTS=DIR the pages are also saved as DIR/serve-chat.png and DIR/serve-arena.png
(the README's pictures: `MINIGPT_SERVE_SCREENSHOTS=docs pytest tests/serve/test_browser.py`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import TINY, running, served_models

from minigpt.model.config import GPTConfig
from minigpt.model.load import save_pretrained
from minigpt.model.model import GPT

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)",
    ),
    pytest.mark.usefixtures("one_thread"),
]

SCREENSHOTS = os.environ.get("MINIGPT_SERVE_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Two tiny random models with room for a conversation (a context of 256), an arena file."""
    root = tmp_path_factory.mktemp("browser_models")
    paths = {}
    for seed, name in enumerate(("tiny-a", "tiny-b")):
        torch.manual_seed(seed)
        paths[name] = root / name
        save_pretrained(GPT(GPTConfig(**{**TINY, "block_size": 256})), paths[name])
    models = served_models(paths)
    with running(models, arena_db=root / "votes.sqlite") as (url, _):
        yield url, models


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,760", "--lang=en"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, seconds: float = 30):
    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: condition(d))


def screenshot(driver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / name))


def assistant_bubbles(driver):
    return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")


def send(driver, text: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.clear()
    driver.execute_script("arguments[0].value = arguments[1]", box, text)  # chromedriver types only the BMP
    driver.find_element(By.ID, "send").click()


def reply_text(bubble) -> str:
    """A reply bubble's text, less the line of metadata the page adds when it is finished."""
    return bubble.get_attribute("textContent").removesuffix(bubble.find_element(By.CLASS_NAME, "meta").text)


def test_the_chat_page_streams_keeps_the_conversation_and_stops(server, browser):
    url, models = server
    browser.get(url + "/")
    wait(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    Select(browser.find_element(By.ID, "model")).select_by_value("tiny-b")
    browser.execute_script(
        "const t = document.getElementById('temperature'); t.value = '0'; t.dispatchEvent(new Event('input'))"
    )
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("24")
    system = "あなたは親切なアシスタントです 🤖"
    browser.find_element(By.ID, "system").send_keys(system)

    conversation = [{"role": "system", "content": system}]
    for text in ("こんにちは！今日はいい天気ですね ☀️", "Tell me a story 📚"):
        send(browser, text)
        conversation.append({"role": "user", "content": text})
        n = len(conversation) // 2
        wait(browser, lambda d, n=n: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant .meta")) == n)
        shown = reply_text(assistant_bubbles(browser)[-1])
        # what the page shows is the API's answer to the whole conversation so far
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "tiny-b", "messages": conversation, "temperature": 0, "max_tokens": 24},
            timeout=30,
        )
        answer = r.json()["choices"][0]["message"]["content"]
        assert shown == answer
        conversation.append({"role": "assistant", "content": answer})
    users = browser.find_elements(By.CSS_SELECTOR, ".msg.user")
    assert [u.text for u in users] == [conversation[1]["content"], conversation[3]["content"]]
    screenshot(browser, "serve-chat.png")

    # Stop: the stream ends at once and the server frees the row
    engine = models["tiny-b"].engine
    slow = engine.model.register_forward_pre_hook(lambda m, a: time.sleep(0.05))
    try:
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("40")
        send(browser, "and then?")
        wait(browser, lambda d: not d.find_element(By.ID, "stop").get_attribute("disabled"))
        wait(browser, lambda d: assistant_bubbles(d)[-1].text != "")
        browser.find_element(By.ID, "stop").click()
        wait(browser, lambda d: "stopped" in assistant_bubbles(d)[-1].text, 5)
        deadline = time.monotonic() + 2
        while engine.load() != (0, 0):
            assert time.monotonic() < deadline, "the stopped request still holds its row"
            time.sleep(0.02)
    finally:
        slow.remove()


def test_the_arena_streams_two_anonymous_answers_and_records_the_vote(server, browser):
    url, models = server
    before = httpx.get(f"{url}/arena/api/leaderboard").json()["votes"]
    browser.get(url + "/arena")
    browser.find_element(By.ID, "prompt").send_keys("Write a haiku about the sea. 海")
    browser.find_element(By.ID, "go").click()
    vote = browser.find_element(By.CSS_SELECTOR, ".vote[data-winner='left']")
    wait(browser, lambda d: vote.is_enabled())
    left, right = browser.find_element(By.ID, "left").text, browser.find_element(By.ID, "right").text
    assert left and right
    assert browser.find_element(By.ID, "left-name").text == "Model A"  # anonymous until the vote
    vote.click()
    wait(browser, lambda d: "Model A: " in d.find_element(By.ID, "left-name").text)
    screenshot(browser, "serve-arena.png")
    names = {browser.find_element(By.ID, side).text.split(": ", 1)[1] for side in ("left-name", "right-name")}
    assert names == set(models)
    assert httpx.get(f"{url}/arena/api/leaderboard").json()["votes"] == before + 1
    browser.get(url + "/arena/leaderboard")
    assert "Bradley-Terry" in browser.page_source
