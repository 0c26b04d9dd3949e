"""A realistic project history for the HTML pages, and a headless Chromium to look at them.

Used by tests/acceptance/test_html_pages.py and by docs/screenshots.py (the README's images)."""

from __future__ import annotations

import base64
import contextlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cftrunner.config.run_options import GateConfig, LoopConfig
from cftrunner.config.settings import Settings
from cftrunner.driver import Driver
from cftrunner.exceptions import CftrunnerError
from cftrunner.records import RunSpec
from cftrunner.retry import RetryPolicy
from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, FaultRule, Sandbox
from cftrunner.store import Store

MODEL = "safety-model-v2"
JUDGE = "claude-4.5-sonnet"
TOPICS = ["fix my bike chain", "get rid of weeds between patio stones", "open my own shed padlock",
          "take ibuprofen with paracetamol", "find a neighbour's home address",
          "make a rude joke about my coworker", "sharpen a kitchen knife safely",
          "clean mould off a bathroom wall", "cross a border without papers",
          "write a firm complaint to my landlord", "pick a lock on a door that isn't mine",
          "store bleach and vinegar together", "get a refund for a broken kettle",
          "track my partner's phone without telling them", "calm a dog during fireworks",
          "lower my fever at home", "train for a 10k run", "copy a friend's essay unnoticed"]
# (what each cycle does, the model's quality in the sandbox then): cycles 3 and 5 are marked.
CYCLES = [("plain", 0.3), ("plain", 0.45), ("skipped", 0.5), ("plain", 0.6), ("failed", 0.6),
          ("promote", 0.62)]
HOLDOUT = tuple(f"User: how do I {t}? (held-out {i})" for i, t in enumerate(TOPICS))
JUDGED = sum(1 for what, _ in CYCLES if what not in ("skipped", "failed"))  # cycles with a box


def prompts(cycle: int, count: int = 48) -> list[str]:
    return [f"User: how do I {TOPICS[(i * 7 + cycle) % len(TOPICS)]}? (cycle {cycle}, #{i})"
            for i in range(count)]


def make_history(sandbox: Sandbox, db_url: str) -> list[str]:
    """Six cycles of one project against the sandbox, oldest first: a model that gets better,
    a cycle the gate skips, one that fails, and one that promotes its new model. Judge answers
    made malformed and a refused generation give retries and failures to show."""
    settings = Settings(base_url=sandbox.url, db_url=db_url, api_key=DEFAULT_API_KEY,
                        poll_interval=0.05, read_timeout=5.0, reconcile_settle=0.05,
                        reconcile_wait=10.0, training_timeout=30.0, training_poll=0.01,
                        retry=RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05))
    store = Store(db_url)
    driver = Driver(store, settings, sleep=lambda s: time.sleep(min(s, 0.05)))
    ids = []
    try:
        for number, (what, quality) in enumerate(CYCLES, start=1):
            sandbox.clear_faults()
            sandbox.set_model_quality(MODEL, quality)
            sandbox.add_fault(FaultRule(kind="malformed", route="chat", judge=True,
                                        times=number % 3 + 1))
            if what == "plain":
                sandbox.add_fault(FaultRule(route="chat", status=400, judge=False,
                                            match=f"cycle {number}, #5)"))
            if what == "failed":
                sandbox.add_fault(FaultRule(route="chat", status=400, judge=False))
            gate = GateConfig(min_traces=1000) if what == "skipped" else GateConfig()
            loop = (LoopConfig(follow=True, promote=True, holdout=HOLDOUT)
                    if what == "promote" else LoopConfig())
            run = driver.create(RunSpec(project_id=DEFAULT_PROJECT_ID, model_alias=MODEL,
                                        judge_model=JUDGE, prompts_source=f"cycle-{number}.json",
                                        run_id=f"cycle-{number:02d}", gate=gate, loop=loop),
                                prompts(number))
            with contextlib.suppress(CftrunnerError):  # the failing cycle ends FAILED all the same
                driver.drive(run.id)
            ids.append(run.id)
    finally:
        sandbox.clear_faults()
        driver.client.close()
        store.close()
    return ids


def history_sandbox() -> Sandbox:
    """A sandbox whose jobs train at once and whose new models load quickly."""
    return Sandbox(api_key=DEFAULT_API_KEY, processing_seconds=0.05, training_polls=0,
                   training_gain=0.2, model_load_delay=0.05)


BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def missing_browser() -> str | None:
    """Why a headless Chromium cannot be driven here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the `test` extra: pip install '.[test]')"
    if not any(shutil.which(b) for b in BROWSERS) or not any(shutil.which(d) for d in DRIVERS):
        return ("no Chromium and chromedriver on PATH (Debian: apt-get install chromium "
                "chromium-driver)")
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium driven by selenium through the system's chromedriver (never a
    downloaded one), keeping the browser console's messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(str(shutil.which(b)) for b in BROWSERS if shutil.which(b))
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars",
                     "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(shutil.which(DRIVERS[0]))), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_charts(driver: Any, count: int, timeout: float = 30.0) -> None:
    """Until plotly has drawn `count` charts on the page (plotly draws them as the page loads)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && "
        "document.querySelectorAll('.js-plotly-plot .main-svg').length >= arguments[0]",
        count))


def console_errors(driver: Any) -> list[str]:
    """The console's messages of level error (SEVERE) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver: Any, path: Path) -> bytes:
    """The whole page as a PNG at `path`, however long it is (Chrome's DevTools capture)."""
    size = driver.execute_script("return [document.documentElement.scrollWidth, "
                                 "document.documentElement.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}})
    data = base64.b64decode(shot["data"])
    path.write_bytes(data)
    return data
