"""`cftrunner report RUN --html` and `report --trend` as real processes: the pages, the files
beside them, their sizes, and what happens without plotly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.store import Store
from cftrunner.views.pages.frame import NEEDS_PLOTLY, PLOTLY_JS
from tests.conftest import Cli

SMALL = 100_000  # bytes: a page without plotly.js in it (the old trend page was 4.8 MB)


def without_plotly(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import plotly` fails, as where the `report` extra is missing."""
    shim = tmp_path / "without-plotly" / "plotly"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text('raise ImportError("No module named \'plotly\'")\n')
    return {"PYTHONPATH": str(shim.parent)}


def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".html", ".js"))


def test_a_runs_page_shows_its_lowest_scores_and_failures_beside_plotly_js(
        cli: Cli, sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.add_fault(FaultRule(route="chat", status=400, match="message 2", judge=False))
    assert cli.run(*cli.start_args("one")).returncode == 0
    result = cli.run("report", "one", "--html")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run       one (LAUNCHED")
    assert result.stdout.rstrip().endswith("wrote cftrunner-report-one.html")
    assert written(tmp_path) == ["cftrunner-report-one.html", PLOTLY_JS]
    page = (tmp_path / "cftrunner-report-one.html").read_text()
    assert len(page.encode()) < SMALL < (tmp_path / PLOTLY_JS).stat().st_size
    store = Store(cli.env["CFTRUNNER_DB"])
    try:
        items = store.items("one")
    finally:
        store.close()
    lowest = sorted((i.score, i.position) for i in items if i.score is not None)
    shown = re.findall(r'<tr><td class="n">(\d+)</td><td class="n">([\d.]+)</td>', page)
    assert [(float(s), int(p)) for p, s in shown] == [(round(s, 2), p) for s, p in lowest]
    assert "cftrunner show one N" in page
    failed = next(i for i in items if i.error_kind)
    assert f"<td>gen_failed:http_400</td><td class=\"n\">1</td><td>{failed.position}</td>" in page
    assert "gate passed" in page


def test_a_runs_page_goes_where_asked_and_the_json_names_it(cli: Cli, tmp_path: Path) -> None:
    assert cli.run(*cli.start_args("one")).returncode == 0
    (tmp_path / "out").mkdir()
    result = cli.run("report", "one", "--json", "--html=out/page.html")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["run_id"] == "one" and data["html"] == "out/page.html"
    assert written(tmp_path / "out") == ["page.html", PLOTLY_JS]
    assert json.loads(cli.run("report", "one", "--json").stdout)["html"] is None


def test_without_plotly_a_runs_page_is_a_one_line_error_and_nothing_is_written(
        cli: Cli, tmp_path: Path) -> None:
    assert cli.run(*cli.start_args("one")).returncode == 0
    result = cli.run("report", "one", "--html", env=without_plotly(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"cftrunner: error: {NEEDS_PLOTLY}"]
    assert written(tmp_path) == []


def test_without_plotly_the_trend_prints_its_table_and_how_to_get_the_page(
        cli: Cli, tmp_path: Path) -> None:
    for run_id in ("one", "two"):
        assert cli.run(*cli.start_args(run_id)).returncode == 0
    result = cli.run("report", "--trend", env=without_plotly(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and "one" in lines[1] and "two" in lines[2]
    assert result.stderr.splitlines() == [
        "no HTML page: the HTML pages need plotly: pip install 'cftrunner[report]'"]
    assert written(tmp_path) == []
    data = json.loads(cli.run("report", "--trend", "--json", env=without_plotly(tmp_path)).stdout)
    assert data["html"] is None and len(data["cycles"]) == 2
    # A page asked for by name cannot be made: that is an error.
    named = cli.run("report", "--trend", "--html", "t.html", env=without_plotly(tmp_path))
    assert named.returncode == 2 and NEEDS_PLOTLY in named.stderr
    assert written(tmp_path) == []


def test_the_trend_writes_every_cycles_page_beside_it_and_plotly_js_once(
        cli: Cli, tmp_path: Path) -> None:
    for run_id in ("one", "two"):
        assert cli.run(*cli.start_args(run_id)).returncode == 0
    (tmp_path / "pages").mkdir()
    result = cli.run("report", "--trend", "--html", "pages/trend.html")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("wrote pages/trend.html")
    folder = tmp_path / "pages"
    assert written(folder) == ["cftrunner-report-one.html", "cftrunner-report-two.html",
                               PLOTLY_JS, "trend.html"]
    trend = (folder / "trend.html").read_text()
    assert len(trend.encode()) < SMALL
    for run_id in ("one", "two"):
        assert f'<a href="cftrunner-report-{run_id}.html">{run_id}</a>' in trend
        run_page = (folder / f"cftrunner-report-{run_id}.html").read_text()
        assert '<a href="trend.html">' in run_page and len(run_page.encode()) < SMALL
    before = (folder / PLOTLY_JS).stat()
    assert cli.run("report", "--trend", "--html", "pages/trend.html").returncode == 0
    assert len(written(folder)) == 4  # and plotly.js, the same, was left as it was:
    assert (folder / PLOTLY_JS).stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize("args", [("one", "--project", "p"), ("one", "--html", "--no-html"),
                                  ("--trend", "--html", "t.html", "--no-html")])
def test_options_that_do_not_go_together_are_usage_errors(
        cli: Cli, tmp_path: Path, args: tuple[str, ...]) -> None:
    result = cli.run("report", *args)
    assert result.returncode == 2 and written(tmp_path) == []
