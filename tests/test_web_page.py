"""The web page of `asr serve` in a real headless Chromium (the system's chromium and chromium-driver,
driven by selenium; nothing is downloaded): upload a file, see the transcript with each word's time
and confidence colour, click a word to seek the player there; a screenshot goes to the test's tmp dir.
Recording goes through Chromium's fake microphone. Skipped where no browser is installed (.ci/run
installs one)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from asr.data import read_manifest  # noqa: E402
from server_process import start_server, stop_server  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser(monkeypatch):
    found = find_browser()
    if found is None:
        pytest.skip("no chromium and chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must not fetch a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    # The fake media flags give getUserMedia a generated microphone (a beep) without a permission prompt.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,700", "--autoplay-policy=no-user-gesture-required",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_upload_a_file_and_see_the_transcript(synth_model, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    checkpoint, manifest = synth_model
    utt = read_manifest(manifest)[0]
    process, port = start_server(checkpoint, tmp_path / "server.log")
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 30).until(lambda d: "16000 Hz" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(Path(utt.audio).resolve()))
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#transcript .word")
                                         or "error" in d.find_element(By.ID, "status").text)
        words = browser.find_elements(By.CSS_SELECTOR, "#transcript .word")
        browser.save_screenshot(str(tmp_path / "transcript.png"))
        assert [w.find_element(By.CLASS_NAME, "w").text for w in words] == utt.text.split(), \
            browser.find_element(By.ID, "status").text
        assert browser.find_element(By.ID, "text").text == utt.text
        assert browser.find_element(By.ID, "status").text.startswith("done")
        for w in words:
            confidence = float(w.get_attribute("data-confidence"))
            assert 0 < confidence <= 1
            assert w.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
            assert f"confidence {confidence:.2f}" in w.get_attribute("title")
            assert float(w.find_element(By.TAG_NAME, "small").text) == pytest.approx(float(w.get_attribute("data-start")))
        # Clicking the last word moves the player to its start.
        words[-1].click()
        start = float(words[-1].get_attribute("data-start"))
        WebDriverWait(browser, 10).until(
            lambda d: abs(d.execute_script("return document.getElementById('player').currentTime") - start) < 0.05)
        assert (tmp_path / "transcript.png").stat().st_size > 1000
    finally:
        stop_server(process)


def test_record_from_the_microphone(synth_model, browser, tmp_path):
    """Record, Stop: the page encodes the samples as WAV, the server accepts it (its length is what
    was recorded) and the page shows the answer (the fake microphone's beep has no known transcript)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    checkpoint, _ = synth_model
    process, port = start_server(checkpoint, tmp_path / "server.log")
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 30).until(lambda d: "16000 Hz" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "record").click()
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "status").text == "recording…")
        browser.execute_script("return new Promise((resolve) => setTimeout(resolve, 1500))")
        browser.find_element(By.ID, "record").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
        status = browser.find_element(By.ID, "status").text
        browser.save_screenshot(str(tmp_path / "recording.png"))
        assert status.startswith("done"), status
        seconds = float(status.split()[1])
        assert 1.0 < seconds < 10.0, status
        assert browser.find_element(By.ID, "record").text == "Record"
    finally:
        stop_server(process)


def test_a_server_with_an_api_key_is_used_through_the_key_field(synth_model, browser, tmp_path):
    """Issue 29 row 6: with --api-key the page shows a key field; without the key the server's 401
    message is shown, with it the file is transcribed (the page sends it as a Bearer token)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    checkpoint, manifest = synth_model
    utt = read_manifest(manifest)[0]
    process, port = start_server(checkpoint, tmp_path / "server.log", "--api-key", "page-key")
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "api-key").is_displayed())
        browser.find_element(By.ID, "file").send_keys(str(Path(utt.audio).resolve()))
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
        assert browser.find_element(By.ID, "status").text.startswith("error 401: no API key was sent")
        browser.find_element(By.ID, "api-key").send_keys("page-key")
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith("done"))
        assert browser.find_element(By.ID, "text").text == utt.text
    finally:
        stop_server(process)
