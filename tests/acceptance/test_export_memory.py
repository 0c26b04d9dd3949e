"""`cftrunner export` of a 20,000-item run streams: a real process whose peak memory stays under
100 MB, writing every item once, in order."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cftrunner.store import Store
from tests.conftest import Cli
from tests.item_runs import build_run, expected_record

MANY = 20_000
MEMORY_LIMIT = 100e6  # bytes; the items alone, as written, are some 30 MB (JSONL)
MB = 1e6


# Run from a small process of its own: a child started straight from this test process (vfork,
# then exec) starts its ru_maxrss at this process's peak, which Linux carries over the exec.
MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def peak_rss(cli: Cli, tmp_path: Path, *args: str) -> tuple[int, float, str]:
    """Run `cftrunner ARGS` to its end: its exit status, the peak RSS of that process alone
    (resource.getrusage of the small process that waited for it: RUSAGE_CHILDREN's ru_maxrss,
    in KiB on Linux), and its stderr."""
    result = subprocess.run([sys.executable, "-c", MEASURE, *cli.command(*args)], env=cli.env,
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    scale = 1 if sys.platform == "darwin" else 1024
    return result.returncode, int(result.stdout.split()[-1]) * scale, result.stderr


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_of_20000_items_stays_under_100_mb_and_writes_each_once_in_order(
        cli: Cli, tmp_path: Path, fmt: str) -> None:
    store = Store(cli.env["CFTRUNNER_DB"])
    try:
        build_run(store, "big", MANY)
    finally:
        store.close()
    target = tmp_path / f"items.{fmt}"
    code, peak, stderr = peak_rss(cli, tmp_path, "export", "big", "--format", fmt, "--output",
                                  str(target))
    assert code == 0, stderr
    written = target.stat().st_size
    assert written > 0.25 * MEMORY_LIMIT  # enough that holding it all would show
    assert peak < MEMORY_LIMIT, f"peak RSS {peak / MB:.1f} MB for {written / MB:.1f} MB written"
    with target.open(encoding="utf-8", newline="") as read:
        if fmt == "jsonl":
            records = (json.loads(line) for line in read)
            for i, record in enumerate(records):
                assert record == expected_record("big", i)
        else:
            rows = csv.reader(read)
            header = next(rows)
            for i, row in enumerate(rows):
                record = {k: "" if v is None else str(v)
                          for k, v in expected_record("big", i).items()}
                assert dict(zip(header, row, strict=True)) == record
    assert i == MANY - 1
