"""kelp serve in a real headless browser (Debian's chromium, installed by scripts/browser.sh): queues appear,
counts change live as messages flow, a dead letter is browsed and requeued with the token, refused without."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import kelp

from .web_kit import ORDERS, TOKEN, Served, fill

WAIT = 15


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver is missing: run scripts/browser.sh install (scripts/test does)"
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    chromium = shutil.which("chromium")
    if chromium:
        options.binary_location = chromium
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def cell(browser: webdriver.Chrome, queue: str, column: str) -> str:
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-queue='{queue}']")
    return str(row.find_element(By.CLASS_NAME, column).text)


def test_live_counts_dead_letters_and_token(tmp_path: Any, browser: webdriver.Chrome) -> None:
    url = fill(f"sqlite:///{tmp_path}/browser.db")
    served = Served(url, allow_write=True, token=TOKEN)
    wait = WebDriverWait(browser, WAIT)
    try:
        browser.get(served.base + "/")
        assert cell(browser, "jobs", "ready") == "3"
        assert cell(browser, "jobs.dead", "ready") == "1"
        # Messages flow: the page updates itself, without a reload.
        with kelp.Connection(url) as connection:
            producer = connection.Producer(exchange=ORDERS)
            for n in range(5):
                producer.publish({"more": n}, routing_key="new")
        wait.until(lambda b: cell(b, "jobs", "ready") == "8")
        # The broker counted them: the publish rate cell, rendered "-" before two samples existed,
        # shows them arriving (per second over the server's window).
        wait.until(lambda b: cell(b, "jobs", "publish_rate") not in ("", "-", "0", "0.0"))
        assert float(cell(browser, "jobs", "publish_rate")) > 0

        # Browse the dead-letter queue.
        browser.find_element(By.LINK_TEXT, "jobs.dead").click()
        wait.until(
            lambda b: "dead letter from queue jobs (rejected; exchange orders, key new)" in b.page_source
        )
        assert '"order": "dead"' in browser.find_element(By.CSS_SELECTOR, "pre.body").text

        # A wrong token is refused.
        form = browser.find_element(By.ID, "requeue")
        form.find_element(By.NAME, "token").send_keys("wrong")
        form.find_element(By.TAG_NAME, "button").click()
        wait.until(lambda b: "wrong or missing token" in b.page_source)
        assert {q["name"]: q["ready"] for q in served.api("/api/queues")["queues"]}["jobs.dead"] == 1

        # With the token, the dead letter goes back to where it came from.
        browser.get(served.base + "/queues/jobs.dead")
        form = browser.find_element(By.ID, "requeue")
        form.find_element(By.NAME, "token").send_keys(TOKEN)
        form.find_element(By.TAG_NAME, "button").click()
        wait.until(lambda b: "0 message(s) shown" in b.page_source)
        browser.get(served.base + "/")
        assert cell(browser, "jobs", "ready") == "9"
        assert cell(browser, "jobs.dead", "ready") == "0"
    finally:
        served.close()
