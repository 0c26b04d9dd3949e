"""The README's screenshots of the HTML pages, from a six-cycle history against the sandbox.

Run from the repository, with the `test` extra and Debian's chromium and chromium-driver:

    python docs/screenshots.py

It writes docs/trend-page.png and docs/run-page.png (the cycle that promoted its model)."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from tests.pages import (  # noqa: E402
    chromium,
    console_errors,
    history_sandbox,
    make_history,
    missing_browser,
    screenshot,
    wait_for_charts,
)


def main() -> int:
    if reason := missing_browser():
        print(f"cannot take the screenshots: {reason}", file=sys.stderr)
        return 1
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING + 10))
    with tempfile.TemporaryDirectory(prefix="cftrunner-screenshots-") as tmp:
        folder = Path(tmp)
        db_url = f"sqlite:///{folder}/state.db"
        with history_sandbox() as sandbox:
            run_ids = make_history(sandbox, db_url)
        subprocess.run([sys.executable, "-m", "cftrunner", "report", "--trend", "--html",
                        "trend.html", "--db", db_url], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
        with chromium(width=1200) as browser:
            for page, charts, png in (
                    ("trend.html", 3, "trend-page.png"),
                    (f"cftrunner-report-{run_ids[-1]}.html", 2, "run-page.png")):
                browser.get((folder / page).as_uri())
                wait_for_charts(browser, charts)
                if errors := console_errors(browser):
                    print(f"{page}: {errors}", file=sys.stderr)
                    return 1
                screenshot(browser, ROOT / "docs" / png)
                print(f"wrote docs/{png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
