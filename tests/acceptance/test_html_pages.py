"""Both pages opened from file:// in a real headless Chromium, offline: drawn without a console
error, screenshot taken, and what they show checked against the project's history."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from cftrunner.records import RunSummary
from cftrunner.store import Store
from cftrunner.views.pages.frame import PLOTLY_JS
from cftrunner.views.pages.trend_page import write_trend
from cftrunner.views.trend import trend_row
from tests.conftest import databases, make_run
from tests.pages import (
    CYCLES,
    JUDGED,
    chromium,
    console_errors,
    history_sandbox,
    make_history,
    missing_browser,
    screenshot,
    wait_for_charts,
)

pytestmark = pytest.mark.skipif(missing_browser() is not None,
                                reason=missing_browser() or "a browser is installed")
PNG = b"\x89PNG\r\n\x1a\n"


class Pages:
    def __init__(self, folder: Path, db_url: str, run_ids: list[str]) -> None:
        self.folder, self.db_url, self.run_ids = folder, db_url, run_ids

    @property
    def trend(self) -> Path:
        return self.folder / "trend.html"


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    """The pages of a six-cycle history, written by `cftrunner report --trend` in a real process."""
    folder = tmp_path_factory.mktemp("pages")
    db_url = databases().new(folder)
    with history_sandbox() as sandbox:
        run_ids = make_history(sandbox, db_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CFTRUNNER_")}
    result = subprocess.run([sys.executable, "-m", "cftrunner", "report", "--trend", "--html",
                             "trend.html"], cwd=folder, env={**env, "CFTRUNNER_DB": db_url},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    yield Pages(folder, db_url, run_ids)
    databases().drop(db_url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium with the network switched off: the pages must need none."""
    with chromium() as driver:
        driver.set_network_conditions(offline=True, latency=0, download_throughput=0,
                                      upload_throughput=0)
        yield driver


def load(browser: Any, page: Path, charts: int, shot: Path) -> None:
    """Open the page, wait for its charts, check the console is clean, take its screenshot."""
    from selenium.common.exceptions import TimeoutException

    console_errors(browser)  # what earlier pages logged
    browser.get(page.as_uri())
    try:
        wait_for_charts(browser, charts)
    except TimeoutException:
        pytest.fail(f"{page.name}: the charts were not drawn; console: {console_errors(browser)}")
    assert browser.execute_script("return typeof Plotly") == "object"
    assert console_errors(browser) == []
    assert screenshot(browser, shot).startswith(PNG) and shot.stat().st_size > 10_000


def texts(browser: Any, selector: str) -> list[str]:
    found: list[str] = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", selector)
    return found


def test_the_trend_page_draws_a_box_per_judged_cycle_in_order_and_marks_the_others(
        pages: Pages, browser: Any, tmp_path: Path) -> None:
    load(browser, pages.trend, 3, tmp_path / "trend.png")
    assert len(browser.find_elements("css selector", "#scores .boxlayer .trace")) == JUDGED
    assert texts(browser, "#scores .annotation-text") == ["SKIPPED", "FAILED"]
    ticks = texts(browser, "#scores .xtick text")  # "#1" over its date, and so on, in order
    assert len(ticks) == len(CYCLES)
    assert all(tick.startswith(f"#{k}") for k, tick in enumerate(ticks, start=1)), ticks


def test_the_percent_and_count_ticks_never_repeat(pages: Pages, browser: Any,
                                                   tmp_path: Path) -> None:
    load(browser, pages.trend, 3, tmp_path / "trend.png")
    for selector in ("#shares .ytick text", "#costs .ytick text", "#costs .y2tick text"):
        labels = texts(browser, selector)
        assert len(labels) >= 2 and len(labels) == len(set(labels)), (selector, labels)
    assert all(label.endswith("%") for label in texts(browser, "#shares .ytick text"))


def test_a_few_percent_read_0_1_2_3_percent_in_the_browser(browser: Any, tmp_path: Path) -> None:
    """Where the old page labelled a 0-3% axis 3%, 2%, 2%, 1%."""
    rows = [replace(trend_row(RunSummary(make_run(f"r{k}"), {"ADDED": 100}, {}), [0.6] * 100),
                    failure_share=share) for k, share in enumerate((0.028, 0.021, 0.0, 0.014))]
    rows = [replace(r, share_below=None) for r in rows]
    write_trend(rows, [], tmp_path / "trend.html")
    load(browser, tmp_path / "trend.html", 3, tmp_path / "small.png")
    assert texts(browser, "#shares .ytick text") == ["0%", "1%", "2%", "3%"]


def test_every_link_on_the_trend_page_opens_an_existing_page(pages: Pages, browser: Any,
                                                             tmp_path: Path) -> None:
    load(browser, pages.trend, 3, tmp_path / "trend.png")
    hrefs: list[str] = browser.execute_script(
        "return [...document.querySelectorAll('a[href]')].map(a => a.href)")
    assert len(hrefs) == len(CYCLES)
    for url in hrefs:
        assert Path(unquote(urlparse(url).path)).is_file(), url
    assert sorted(p.name for p in pages.folder.glob("*.js")) == [PLOTLY_JS]


def test_a_click_on_a_box_opens_that_cycles_page(pages: Pages, browser: Any,
                                                 tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    load(browser, pages.trend, 3, tmp_path / "trend.png")
    last_box = browser.find_elements("css selector", "#scores .boxlayer .trace path.box")[-1]
    ActionChains(browser).move_to_element(last_box).click().perform()
    deadline = time.monotonic() + 30
    while not browser.current_url.endswith(f"cftrunner-report-{pages.run_ids[-1]}.html"):
        assert time.monotonic() < deadline, browser.current_url
        time.sleep(0.1)


def test_the_run_page_shows_the_lowest_scores_and_the_promotion_with_both_sides(
        pages: Pages, browser: Any, tmp_path: Path) -> None:
    run_id = pages.run_ids[-1]  # the cycle that promoted its model
    load(browser, pages.folder / f"cftrunner-report-{run_id}.html", 2, tmp_path / "run.png")
    store = Store(pages.db_url)
    try:
        run, items = store.run(run_id), store.items(run_id)
    finally:
        store.close()
    judged = [i for i in items if i.score is not None]
    bars = browser.execute_script("return document.getElementById('histogram').data[0].y")
    assert sum(bars) == len(judged)
    lowest = sorted(judged, key=lambda i: (i.score, i.position))[:10]
    rows = browser.execute_script(
        "return [...document.querySelectorAll('table')[1].querySelectorAll('tbody tr')]"
        ".map(r => r.cells[0].textContent)")
    assert rows == [str(i.position) for i in lowest]
    assert run.promotion is not None
    models = texts(browser, "table:first-of-type tbody tr td:first-child")
    assert models == [run.promotion["current"]["model_id"],
                      *(c["model_id"] for c in run.promotion["candidates"])]
    assert "promoted" in texts(browser, "span.state")


def test_the_failed_cycles_page_groups_its_failures(pages: Pages, browser: Any,
                                                    tmp_path: Path) -> None:
    run_id = pages.run_ids[[what for what, _ in CYCLES].index("failed")]
    load(browser, pages.folder / f"cftrunner-report-{run_id}.html", 2, tmp_path / "failed.png")
    body = browser.find_element("tag name", "body").text
    assert "gen_failed:http_400" in body and "No judged item." in body
    assert "every item failed" in body
