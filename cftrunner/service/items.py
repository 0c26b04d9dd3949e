"""The items and export commands as library calls: a run's items listed, or written out whole."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cftrunner import crashpoints
from cftrunner.config.settings import Settings
from cftrunner.exceptions import InputError
from cftrunner.records import Item
from cftrunner.run_ids import check_run_id
from cftrunner.states import ITEM_FAILED, ItemStage
from cftrunner.store import Store
from cftrunner.store.items import PAGE
from cftrunner.views.items import EXPORT_FIELDS, cells, export_record, item_json, items_table

FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class Selection:
    """Which of a run's items `items` lists, and in which order."""

    stages: tuple[ItemStage, ...] = ()  # at one of these stages (any stage when empty)
    failed: bool = False  # at a failed stage (with `stages`: at one that is both)
    below: float | None = None  # scored below this
    above: float | None = None  # scored at or above this
    by_score: bool = False  # by score, lowest first, the unscored last; else by position
    limit: int | None = None  # at most this many, the first in that order

    def stage_filter(self) -> frozenset[ItemStage] | None:
        """The stages wanted; None for every stage."""
        if not self.failed:
            return frozenset(self.stages) if self.stages else None
        return ITEM_FAILED & frozenset(self.stages) if self.stages else ITEM_FAILED


def write_items(settings: Settings, run_id: str, selection: Selection, as_json: bool,
                out: IO[str], width: int | None = None) -> int:
    """Write the run's items that `selection` picks to `out`: a table fitted to `width`, or a
    JSON array (streamed, one object at a time); how many there were."""
    check_run_id(run_id)
    store = Store.existing(settings.db_url)
    try:
        store.run(run_id)
        picked = itertools.islice((item for page in store.item_pages(
            run_id, stages=selection.stage_filter(), below=selection.below,
            above=selection.above, by_score=selection.by_score,
            page=min(PAGE, selection.limit or PAGE)) for item, _ in page), selection.limit)
        if as_json:
            return _json_array(picked, out)
        rows = [cells(item) for item in picked]
        total = sum(store.stage_counts(run_id)[1].values())
        out.write(items_table(rows, total, width) + "\n")
        return len(rows)
    finally:
        store.close()


def _json_array(picked: Iterator[Item], out: IO[str]) -> int:
    count = 0
    out.write("[")
    for count, item in enumerate(picked, 1):
        out.write(("\n  " if count == 1 else ",\n  ")
                  + json.dumps(item_json(item), ensure_ascii=False))
    out.write("\n]\n" if count else "]\n")
    return count


def export(settings: Settings, run_id: str, fmt: str, to: Path | IO[bytes]) -> int:
    """Write every item of the run, in position order, as JSONL or CSV (UTF-8), to the file
    `to` names or to the stream it is (stdout's buffer); how many. The items are read a page at
    a time and written as they come, so a run of any size takes the memory of a page. A file
    is written whole or not at all: into a temporary file beside it, moved into place once
    complete."""
    check_run_id(run_id)
    if fmt not in FORMATS:
        raise InputError(f"the export format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if isinstance(to, Path):
        _check_output(to)
    store = Store.existing(settings.db_url)
    try:
        store.run(run_id)
        records = (export_record(item, tokens)
                   for page in _pages_reached(store.item_pages(run_id)) for item, tokens in page)
        if isinstance(to, Path):
            return _atomically(to, lambda raw: _write(records, fmt, raw))
        return _write(records, fmt, to)
    finally:
        store.close()


def _check_output(output: Path) -> None:
    folder = output.absolute().parent
    if not folder.is_dir():
        raise InputError(f"cannot write {output}: the folder {folder} does not exist")
    if output.is_dir():
        raise InputError(f"cannot write {output}: it is a folder")


def _pages_reached(pages: Iterator[list[tuple[Item, int]]]) -> Iterator[list[tuple[Item, int]]]:
    """The pages, with a crash point after each one has been taken (CFTRUNNER_CRASH_AT=
    export.after_page:N kills the process as it takes page N + 1, part way into the export)."""
    for page in pages:
        yield page
        crashpoints.reach("export.after_page")


def _write(records: Iterator[dict[str, Any]], fmt: str, raw: IO[bytes]) -> int:
    """The records as CSV rows (ending in \\r\\n) or JSON lines (ending in \\n), in UTF-8
    whatever the locale; how many."""
    out = _Utf8(raw)
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for record in records:
            writer.writerow(record)
            count += 1
    else:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    raw.flush()
    return count


class _Utf8:
    """Text written to a binary stream as UTF-8, as it comes: no layer of its own to flush or
    close, so a reader that goes away (a broken pipe) leaves nothing half-written behind."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(text.encode("utf-8"))
        return len(text)


def _atomically(path: Path, write: Callable[[IO[bytes]], int]) -> int:
    """`write` into a temporary file in `path`'s folder, synced, then renamed to `path`: an
    export cut short leaves whatever was at `path` before (and no temporary file, unless the
    process was killed outright)."""
    mode = _mode_for(path)
    fd, temporary = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.",
                                     suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw:
            count = write(raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return count


def _mode_for(path: Path) -> int:
    """The permissions the file gets: those of the file it replaces, else the umask's."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
