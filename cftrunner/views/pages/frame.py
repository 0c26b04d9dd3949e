"""What both pages share: plotly on demand, plotly.js written once beside them, the HTML frame."""

from __future__ import annotations

import html
import importlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cftrunner.exceptions import InputError

NEEDS_PLOTLY = "the HTML pages need plotly: pip install 'cftrunner[report]'"
PLOTLY_JS = "plotly.min.js"  # beside the pages, named by their <script src>

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
td{white-space:nowrap}td:last-child{white-space:normal}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:.1em .5em;border-radius:.3em;background:#e8e8e8}
.bad{background:#fde2e1}.good{background:#e0f3e3}.muted{color:#777}
details summary{cursor:pointer}pre{white-space:pre-wrap;margin:.3em 0}
"""


def plotly(module: str) -> Any:
    """A plotly module, imported only when a page is made: plotly is an optional extra."""
    try:
        return importlib.import_module(f"plotly.{module}")
    except ImportError:
        raise InputError(NEEDS_PLOTLY) from None


def has_plotly() -> bool:
    """Whether the pages can be made here (the `report` extra is installed)."""
    try:
        plotly("graph_objects")
    except InputError:
        return False
    return True


def esc(value: object) -> str:
    return html.escape(str(value))


def run_page_name(run_id: str) -> str:
    """The file name of a run's page: what `report RUN --html` writes, and the trend links to."""
    return f"cftrunner-report-{run_id}.html"


def href(name: str) -> str:
    return quote(name)


# A click on a point, bar, box or annotation at category x opens links[x] (plotly keeps no
# relative link in its own text on a file:// page, so its tick labels cannot be links).
_LINKS = """(function () {{
  var chart = document.getElementById("{{plot_id}}"), links = {links};
  function open(x) {{ if (links[x]) {{ window.location.href = links[x]; }} }}
  chart.on("plotly_click", function (e) {{ if (e.points.length) {{ open(e.points[0].x); }} }});
  chart.on("plotly_clickannotation", function (e) {{ open(e.annotation.x); }});
}})();"""


def chart(figure: Any, div_id: str, height: int = 380,
          links: Mapping[str, str] | None = None) -> str:
    """A figure as a <div> and the script that draws it, plotly.js left to the page's head;
    `links` maps an x category to the page a click on it opens."""
    pio = plotly("io")
    script = None if not links else _LINKS.format(links=json.dumps(
        {x: href(name) for x, name in links.items()}).replace("</", "<\\/"))
    text: str = pio.to_html(figure, full_html=False, include_plotlyjs=False, div_id=div_id,
                            default_height=f"{height}px", post_script=script,
                            config={"displaylogo": False, "responsive": True})
    return text


def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()
          ) -> str:
    """An HTML table of cells already escaped (or built as HTML); `numeric` columns right."""
    right = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f'<td class="n">{c}</td>' if k in right else f"<td>{c}</td>"
                                      for k, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def page(title: str, body: Iterable[str]) -> str:
    """A whole page: plotly.js from the file beside it (no network), then `body`."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">', f"<title>{esc(title)}</title>",
        f'<script src="{PLOTLY_JS}"></script>', f"<style>{STYLE}</style></head><body>",
        *body, "</body></html>", ""])


def write_pages(pages: Mapping[Path, str]) -> None:
    """Write plotly.js once into each folder the pages go to (unless the same file is there
    already), then the pages; InputError when a file cannot be written."""
    script: str = plotly("offline").get_plotlyjs()
    for path in pages:
        if not path.parent.is_dir():
            raise InputError(f"cannot write {path}: no folder {path.parent}")
    data = script.encode("utf-8")
    for folder in sorted({path.parent for path in pages}):
        beside = folder / PLOTLY_JS
        if not (beside.is_file() and beside.stat().st_size == len(data)
                and beside.read_bytes() == data):
            _write(beside, data)
    for path, text in pages.items():
        _write(path, text.encode("utf-8"))


def _write(path: Path, data: bytes) -> None:
    """Write whole or not at all: to a temporary file beside `path`, renamed over it."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
