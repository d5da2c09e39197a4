"""`falcon-desktop ui` in a real headless Chromium, as a user clicks through it: plan, check data, train the tiny
model a few steps, look at the run, ask it a question.

Uses Debian's `chromium` and `chromium-driver` (never a downloaded browser); skips without them. Set
FALCON_DESKTOP_UI_SCREENSHOTS=docs/img to refresh the screenshots shown in docs/ui.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the UI extra is not installed (pip install 'falcon-desktop[ui]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'falcon-desktop[test]')")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")

# Without the networking flags, Chromium's own background connections are refused in sandboxes and slow it down.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


@pytest.fixture
def ui_url(tmp_path: Path):
    """`falcon-desktop ui` itself, started as a user would; its printed address."""
    process = subprocess.Popen(
        [sys.executable, "-m", "falcon_desktop", "ui", "--no-browser", "--root", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
    )
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        yield line.split()[-1]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    target = Path(os.environ.get("FALCON_DESKTOP_UI_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(target / f"ui-{name}.png"))


def _type(driver, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id) if element_id[0] != "[" else driver.find_element(By.CSS_SELECTOR, element_id)
    field.clear()
    field.send_keys(text)


def test_plan_train_and_ask_in_chromium(ui_url: str, browser, tiny_model_dir: Path, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 90, poll_frequency=0.2)
    text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
    browser.get(ui_url)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert "token" not in browser.current_url  # the token went into a cookie, out of the address bar

    # Plan: Falcon-7B on an RTX 4090 first (the screenshot), then the tiny model this test trains.
    Select(browser.find_element(By.NAME, "gpu")).select_by_value("RTX 4090")
    wait.until(lambda d: "RTX 4090" in text("plan-title") and "fits" in text("memory-bar"))
    _screenshot(browser, "plan", tmp_path)
    _type(browser, "[name=model]", str(tiny_model_dir))
    wait.until(lambda d: "(falcon)" in text("plan-title") and "query_key_value" in text("lora-targets"))

    # Train: check the data, then a short run; the charts fill from the run's own metrics.
    browser.find_element(By.CSS_SELECTOR, '[data-tab="train"]').click()
    browser.find_element(By.ID, "data-inspect").click()
    wait.until(lambda d: "records kept" in text("data-report") and d.find_element(By.ID, "train-start").is_enabled())
    assert "No problems found" in text("data-report")
    _type(browser, "[name=max_steps]", "30")
    _type(browser, "[name=eval_examples]", "0")
    _type(browser, "[name=learning_rate]", "0.003")
    browser.find_element(By.ID, "train-start").click()
    wait.until(lambda d: "finished" in text("train-status") and not d.find_element(By.ID, "train-stop").is_enabled())
    assert "step 30 of 30" in text("train-status")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-loss svg path")
    _screenshot(browser, "train", tmp_path)

    # Runs: the new run, ticked, shows its card and loss curve.
    browser.find_element(By.CSS_SELECTOR, '[data-tab="runs"]').click()
    checkbox = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#runs-table tbody input[type=checkbox]"))
    checkbox.click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-compare .card svg path"))
    _screenshot(browser, "runs", tmp_path)

    # Ask: load the run's adapter, paste a passage, ask; the answer streams in with its speed.
    browser.find_element(By.CSS_SELECTOR, '[data-tab="ask"]').click()
    browser.find_element(By.ID, "ask-load").click()
    wait.until(lambda d: text("ask-state").startswith("Loaded"))
    _type(browser, "ask-context", "The peregrine falcon nests on cliff ledges and tall buildings.")
    _type(browser, "ask-question", "Where does the peregrine falcon nest?")
    browser.find_element(By.CSS_SELECTOR, "#ask-form button.primary").click()
    wait.until(lambda d: "TTFT" in d.find_element(By.CSS_SELECTOR, "#ask-log .stats").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "#ask-error:not([hidden])")
    _screenshot(browser, "ask", tmp_path)

    # Machine: the doctor's checks with their fixes.
    browser.find_element(By.CSS_SELECTOR, '[data-tab="machine"]').click()
    wait.until(lambda d: "QLoRA fine-tune of 7B models" in text("doctor-verdict"))
    _screenshot(browser, "machine", tmp_path)
