"""Tables fitted to a width: fixed columns whole, the others sharing the rest, long cells cut."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys

import pytest
from rich.cells import cell_len

if sys.platform != "win32":
    import fcntl
    import termios

from cftrunner.views.tables import Column, cut_start, table


@pytest.fixture(autouse=True)
def not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard output is not a terminal here, even under `pytest -s` at one."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())


ERROR = ("reading the project: GET /api/v1/public/projects/6f1c2b8e-3d4a-4e5f-9a7b-0c1d2e3f4a5b "
         "failed: HTTP 404 project not found")
COLUMNS = [Column("RUN ID"), Column("STATE"), Column("ITEMS", justify="right"),
           Column("OWNER", ratio=1), Column("LAST ERROR", keep="end", ratio=3)]
ROWS = [("20261121-223000-a1b2c3", "FAILED", "40", "-", ERROR),
        ("r2", "LAUNCHED", "7", "build-host pid 4242 for 4m00s", "")]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cells_of(line: str, header: str, lines: list[str]) -> str:
    """The text of `line` from where `header` starts in the header line."""
    return line[lines[0].index(header):]


@pytest.mark.parametrize("width", [50, 80, 120, 160, 300])
def test_every_line_fits_the_width(width: int) -> None:
    lines = table(COLUMNS, ROWS, width).splitlines()
    assert len(lines) == 3
    assert max(cell_len(line) for line in lines) <= width


def test_a_table_wide_enough_cuts_nothing_and_lines_its_columns_up() -> None:
    lines = table(COLUMNS, ROWS, 300).splitlines()
    assert "…" not in "".join(lines)
    assert re.split(r"\s{2,}", lines[0]) == ["RUN ID", "STATE", "ITEMS", "OWNER", "LAST ERROR"]
    assert cells_of(lines[1], "LAST ERROR", lines) == ERROR
    assert cells_of(lines[2], "OWNER", lines) == "build-host pid 4242 for 4m00s"
    assert cells_of(lines[1], "STATE", lines).startswith("FAILED ")
    # right-justified: the numbers end under the header's end
    end = lines[0].index("ITEMS") + len("ITEMS")
    assert lines[1][end - 2:end] == "40" and lines[2][end - 2:end] == " 7"


@pytest.mark.parametrize("width", [60, 80, 100])
def test_columns_without_a_ratio_stay_whole_while_the_others_shrink(width: int) -> None:
    lines = table(COLUMNS, ROWS, width).splitlines()
    assert lines[1].startswith("20261121-223000-a1b2c3  FAILED    ")
    assert lines[2].startswith("r2                      LAUNCHED  ")


def test_a_long_value_kept_from_its_end_shows_the_status_and_reason() -> None:
    lines = table(COLUMNS, ROWS, 80).splitlines()
    shown = cells_of(lines[1], "LAST ERROR", lines)
    assert shown.startswith("…") and shown.endswith("HTTP 404 project not found")
    assert ERROR.endswith(shown[1:])
    assert len(lines[1]) == 80


def test_a_long_value_kept_from_its_start_is_cut_at_its_end() -> None:
    columns = [Column("RUN ID"), Column("NOTE", ratio=1)]
    lines = table(columns, [("r1", ERROR)], 40).splitlines()
    shown = cells_of(lines[1], "NOTE", lines)
    assert shown.endswith("…") and shown.startswith("reading the project")
    assert ERROR.startswith(shown[:-1]) and cell_len(lines[1]) == 40


def test_the_spare_width_is_shared_by_ratio() -> None:
    columns = [Column("A", ratio=1), Column("B", ratio=3)]
    lines = table(columns, [("a" * 100, "b" * 100)], 82).splitlines()
    assert lines[1] == "a" * 19 + "…" + "  " + "b" * 59 + "…"


def test_a_column_that_needs_less_than_its_share_gives_the_rest_to_the_others() -> None:
    lines = table(COLUMNS, [("r1", "FAILED", "1", "-", ERROR)], 80).splitlines()
    assert cells_of(lines[0], "OWNER", lines).startswith("OWNER  LAST ERROR")
    assert cell_len(lines[1]) == 80 and lines[1].endswith("HTTP 404 project not found")


def test_wide_characters_are_cut_by_the_cells_they_take() -> None:
    wide = "日本語のエラー: " * 6 + "404 見つかりません"
    columns = [Column("ID"), Column("ERROR", keep="end", ratio=1), Column("NOTE", ratio=1)]
    for width in (30, 41, 80):
        lines = table(columns, [("r1", wide, wide)], width).splitlines()
        assert max(cell_len(line) for line in lines) <= width
        _, error, note = re.split(r"\s{2,}", lines[1], maxsplit=2)
        assert error.startswith("…") and wide.endswith(error[1:])
        # rich pads with a space where half a wide character would be
        assert note.endswith("…") and wide.startswith(note.removesuffix("…").rstrip())
    assert cut_start("日本語", 4) == "…語" and cut_start("日本語", 5) == "…本語"
    assert cut_start("日本語", 6) == "日本語" and cut_start("abc", 0) == ""


def test_cells_are_text_not_markup_and_stay_on_one_line() -> None:
    lines = table([Column("A"), Column("B")], [("[bold]x[/bold]", "two\nlines  here")],
                  80).splitlines()
    assert lines == ["A               B", "[bold]x[/bold]  two lines here"]


def test_a_column_that_wraps_takes_several_lines_instead_of_cutting() -> None:
    lines = table([Column("ID"), Column("TEXT", no_wrap=False)], [("r1", "word " * 30)],
                  40).splitlines()
    assert len(lines) > 2 and "…" not in "".join(lines)
    assert " ".join(line[4:].strip() for line in lines[1:]) == ("word " * 30).strip()


def test_no_terminal_no_colours() -> None:
    text = table(COLUMNS, ROWS, 80)
    assert "\x1b" not in text


def render_in_a_process(env: dict[str, str], on_a_terminal: bool, columns: int = 80) -> str:
    """What `table` returns in a real process whose stdout is a pipe or a pseudo-terminal of
    `columns` columns."""
    code = ("import sys; from cftrunner.views.tables import Column, table; "
            "sys.stderr.write(table([Column('RUN ID'), Column('NOTE', ratio=1)], "
            "[('r1', 'x' * 300)]))")
    env = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}, **env}
    if not on_a_terminal:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, check=True).stderr
    primary, secondary = os.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=secondary,
                            stderr=subprocess.PIPE, text=True)
    os.close(secondary)
    try:
        _, err = proc.communicate(timeout=60)  # nothing is written to the terminal itself
    finally:
        os.close(primary)
    return err


def test_off_a_terminal_the_width_is_100_or_columns() -> None:
    assert [len(line) for line in render_in_a_process({}, False).splitlines()] == [12, 100]
    assert [len(line) for line in render_in_a_process({"COLUMNS": "57"}, False).splitlines()] == [
        12, 57]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_on_a_terminal_the_header_is_bold_and_the_width_is_the_terminals() -> None:
    shown = render_in_a_process({"TERM": "xterm-256color"}, True, columns=73)
    assert "\x1b[1m" in shown
    assert [len(line) for line in ANSI.sub("", shown).splitlines()] == [12, 73]
    shown = render_in_a_process({"COLUMNS": "61", "TERM": "xterm-256color"}, True, columns=73)
    assert [len(line) for line in ANSI.sub("", shown).splitlines()] == [12, 61]
    assert "\x1b" not in render_in_a_process({"COLUMNS": "61", "TERM": "xterm-256color"}, False)
