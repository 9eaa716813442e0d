"""The web page in a real browser: Debian's headless Chromium driven by Selenium (the system's
chromedriver; nothing downloads a browser). Install both with `apt-get install chromium
chromium-driver`; without them this test skips."""

import shutil
from pathlib import Path

import pytest

from .conftest import API_KEY, EXAMPLE

pytestmark = pytest.mark.slow

SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "runs" / "screenshots"


def _browser():
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no Chromium and chromedriver on this machine (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1600"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_page_asks_and_streams_the_answer(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        browser.get(server + "/")
        browser.find_element(By.ID, "file").send_keys(str(EXAMPLE))
        browser.find_element(By.ID, "question").send_keys("Which direction does the red square move?")
        browser.find_element(By.ID, "options").send_keys("left, right, up, down")
        browser.find_element(By.ID, "apikey").send_keys(API_KEY)
        browser.find_element(By.ID, "ask").click()
        WebDriverWait(browser, 120).until(lambda b: b.execute_script("return document.body.dataset.done === '1'"))
        assert browser.find_element(By.ID, "error").text == ""
        assert browser.find_element(By.ID, "answer").text == "B. right"

        def stat(name):
            return browser.find_element(By.CSS_SELECTOR, f'[data-stat="{name}"]').text

        assert stat("frames sampled") == "16"
        assert stat("visual tokens before reduction") == "256"
        assert stat("visual tokens read by the LLM") == "16"
        assert stat("time to first token").endswith(" s")
        WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#thumbs figure")) == 16)
        captions = [f.text for f in browser.find_elements(By.CSS_SELECTOR, "#thumbs figcaption")]
        assert captions[0] == "0.00 s" and captions[1] == "0.13 s"
        # An open question streams its words in.
        browser.find_element(By.ID, "options").clear()
        browser.find_element(By.ID, "question").clear()
        browser.find_element(By.ID, "question").send_keys("What happens in the video?")
        browser.execute_script("document.body.dataset.done = ''")
        browser.find_element(By.ID, "ask").click()
        WebDriverWait(browser, 120).until(lambda b: b.execute_script("return document.body.dataset.done === '1'"))
        assert browser.find_element(By.ID, "answer").text == "the red square moves right"
        assert int(stat("completion tokens")) > 0
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT_DIR / "web_page.png"))
    finally:
        browser.quit()
