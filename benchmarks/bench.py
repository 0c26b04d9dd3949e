"""Benchmark a whole cftrunner cycle against the local Prem sandbox: wall time, CPU, memory, resume.

Usage:
    python benchmarks/bench.py                  # the full default run (about 5 minutes on 2 cores)
    python benchmarks/bench.py --quick          # a smoke run with small N (under a minute)
    python benchmarks/bench.py --n 1000 --latency 0.05 --concurrency 16 --json
    python benchmarks/bench.py --skip-sequential --skip-memory --skip-resume  # 1, 3 and 5
    python benchmarks/bench.py --workers-n 600 --worker-concurrency 8 --pg-url postgresql://...
    python benchmarks/bench.py --export         # the export figure (6) alone (about 10 s)

Everything is real except the API: the sandbox serves over HTTP on 127.0.0.1 from this process,
each cycle runs `Driver.create` + `Driver.drive` in a child process (`bench.py --child cycle`) on an
SQLite file in a temporary folder, so the runner and the sandbox do not share a GIL or a memory
figure. Every sandbox request sleeps `--latency` seconds; additions are corrected after 0.2 s
(`processing_seconds`), recommendations are ready at the first poll (`recs_polls=1`), and the
runner polls every 0.05 s, so deliberate waits stay small.

What it measures, in order:
 1. Concurrent cycle (N = --n, --latency, --concurrency): wall time from create to the end of drive;
    requests per route as the sandbox received them; the lower bound
        bound = sum over routes of (requests x latency) / concurrency,
    i.e. the wall time if request latencies overlapped perfectly and nothing else took time;
    efficiency = bound / wall. Deliberate waits (the runner's sleeps: polls for corrections and
    recommendations, retry backoff) are in the wall time but not in the bound; they are reported
    apart, with efficiency excluding them = bound / (wall - waits); then the average number of
    requests in flight = sum(requests x latency) / (wall - waits), and the most the sandbox was
    handling at once, which concurrency caps.
 2. The same cycle one request at a time (concurrency 1, the tutorial's way). It defaults to
    N = 200 (--sequential-n), as N = 1,000 at 50 ms would take over 200 s; the comparable figure
    is the ratio of per-item wall times, printed with the ratio of the raw wall times.
 3. CPU and peak memory: the cycle at zero latency with N = 20,000 (--memory-n; with --skip-memory,
    N = --n and CPU only). CPU seconds per item = `time.process_time()` around `drive()` in the
    child, divided by N; the sandbox's CPU is not in it (it runs in this process). The peak RSS
    is the child's alone, as a small go-between process reports it (RUSAGE_CHILDREN): started
    straight from this process, a child's peak would start at this process's (see MEASURE_CHILD).
    This phase takes most of the default run's time: it is CPU-bound in the runner.
 4. Resume to the first request: a run of 20,000 items (--resume-n) is created, and resumed once
    until its first request (which reads the project, before any item is loaded), as after a crash
    early in the cycle. Then a fresh `python -m cftrunner resume RUN_ID` is started: the time from
    spawning it to the first request the sandbox receives (a hook on the sandbox's request ledger,
    in this process) is the figure. A third fresh process (`bench.py --child resume`) splits that
    time into interpreter and imports, setup, and `Driver.drive()` up to its first request.
 5. Workers on PostgreSQL: for k = 1, 2, 3, a database `cftrunner_bench_<k>` is created on the
    server of --pg-url (an admin URL, postgresql://postgres@127.0.0.1:5432/postgres by default) and
    dropped afterwards; a run of N = 600 items (--workers-n) is created in it, left without an owner,
    and k processes (`bench.py --child work`, calling `Driver.work` as `cftrunner resume RUN_ID
    --worker` does) are started at once, each with --worker-concurrency requests in flight at most
    (8), against a sandbox at --latency. Figures: wall time from starting them to the run LAUNCHED
    and every one ended; requests per route; bound = requests x latency / (k x concurrency);
    efficiency = bound / wall (and excluding the slowest worker's startup, spawn to
    `Driver.work()`); items per second; speed-up = wall time at k = 1 / wall time at k. Then
    the parts of each, as the sandbox received the requests: the start (to the first request),
    the items (the first item request to the last addition) and their own speed-up, and the
    run-level steps after them (to the job), the corrections check included. Each k
    is checked: every worker exited 0 and the sandbox holds N traces, one addition per trace, one
    snapshot, one job; the benchmark exits 1 if not. With psycopg missing or PostgreSQL
    unreachable the phase prints "skipped: <reason>". On 2 cores the k workers, the sandbox and
    PostgreSQL share the CPUs: the speed-up levels off once the workers are CPU-bound, and at
    --quick's N = 60 process startup dominates.

 6. Export, with --export (and then alone): a run of N = 20,000 judged items (--export-n) is made
    directly in an SQLite file (no API), with prompts of some 750 characters and the judge's
    feedback and reasoning of some 400 each; then `python -m cftrunner export RUN --format F
    --output FILE` runs once per format (jsonl, csv). Figures: wall time from spawning it to its
    exit (interpreter start-up included), items per second = N / wall, its CPU, the MB written,
    and its peak RSS, as `resource.getrusage(RUSAGE_CHILDREN)` reports it in a small process
    that started it and waited for it (a child started straight from this process would count
    this process's own peak: Linux carries ru_maxrss over the exec that follows vfork). The same
    for `cftrunner status RUN`, for the memory any command takes. Each file is read back: every
    item once, in order.

Targets are printed next to the figures and are not asserted: efficiency >= 0.85 at concurrency 16,
50 ms and N = 1,000; peak memory under 100 MB at N = 20,000 and CPU at most 5 ms per
item at N = 1,000 (both issue 21); resume to the first request under 2 s
at N = 20,000; the export's peak memory under 100 MB at N = 20,000. MB here is 10^6 bytes.

Before items run concurrently, `concurrency` is ignored and efficiency comes out near
1 / concurrency; the "requests in flight" line shows which is the case.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # measure this checkout, not whichever cftrunner is installed

import cftrunner  # noqa: E402
from cftrunner import logs  # noqa: E402
from cftrunner.config.settings import Settings  # noqa: E402
from cftrunner.driver import Driver  # noqa: E402
from cftrunner.exceptions import RunStopped  # noqa: E402
from cftrunner.records import RunSpec  # noqa: E402
from cftrunner.retry import RetryPolicy  # noqa: E402
from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, Sandbox  # noqa: E402
from cftrunner.store import Store  # noqa: E402

MODEL = "bench-safety-model-v1"
JUDGE = "claude-4.5-sonnet"
PROCESSING_SECONDS = 0.2
# The cycle at the defaults (figure 1b): the platform's corrections take this long after they are
# queued, and recommendations are ready at this look; the runner waits as a user's does.
DEFAULTS_PROCESSING_S = 1.0
DEFAULTS_RECS_LOOKS = 3
TARGET_DEFAULTS_EFFICIENCY = 0.9
TARGET_RATIO = 14.0
POLL_INTERVAL = 0.05
# Requests the run makes once (or once per poll), not once per item: they cannot overlap across items.
RUN_LEVEL_ROUTES = frozenset({"project", "trace_list", "dataset", "snapshot_create", "recs_generate",
                              "recs_get", "finetune_create", "finetune_get", "models"})
TARGET_EFFICIENCY = 0.85
TARGET_MEMORY_MB = 100.0  # issue 21 (it was 150)
TARGET_RESUME_S = 2.0
TARGET_CPU_MS = 5.0  # per item, at zero latency and N = 1,000 (issue 21)
TARGET_EXPORT_MEMORY_MB = 100.0
WORKER_COUNTS = (1, 2, 3)
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def prompts(n: int) -> list[str]:
    return [f"Benchmark prompt {i}: is this message safe? 'how do I fix my bike chain?'"
            for i in range(n)]


def settings_for(url: str, db_url: str, concurrency: int) -> Settings:
    values: dict[str, Any] = dict(
        base_url=url, db_url=db_url, api_key=DEFAULT_API_KEY, poll_interval=POLL_INTERVAL,
        read_timeout=30.0, reconcile_settle=0.05,
        retry=RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05))
    # Works before and after `concurrency` exists; where it is ignored, items go one at a time.
    if "concurrency" in {f.name for f in dataclasses.fields(Settings)}:
        values["concurrency"] = concurrency
    return Settings(**values)


def spec() -> RunSpec:
    return RunSpec(project_id=DEFAULT_PROJECT_ID, model_alias=MODEL, prompts_source="bench",
                   judge_model=JUDGE)


class Waits:
    """A sleep for the runner that records how long at least one deliberate wait was under way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._since = 0.0
        self.seconds = 0.0
        self.count = 0

    def sleep(self, seconds: float) -> None:
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
            self.count += 1
        try:
            time.sleep(max(0.0, seconds))
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self.seconds += time.perf_counter() - self._since


# -- the child processes -------------------------------------------------------------------------

def child_cycle(args: argparse.Namespace) -> None:
    """Create and drive one run; print one JSON line of what this process measured."""
    logs.configure("warning")
    store = Store(args.db)
    waits = Waits()
    settings = (Settings(base_url=args.url, db_url=args.db, api_key=DEFAULT_API_KEY,
                         concurrency=args.concurrency) if args.defaults
                else settings_for(args.url, args.db, args.concurrency))
    runner = Driver(store, settings, sleep=waits.sleep)
    items = prompts(args.n)
    started = time.perf_counter()
    run = runner.create(spec(), items)
    created = time.perf_counter()
    cpu = time.process_time()
    stopped = None
    try:
        run = runner.drive(run.id)
    except RunStopped as exc:
        stopped = exc.message
    cpu_drive = time.process_time() - cpu
    ended = time.perf_counter()
    state = store.run(run.id).state.value
    runner.client.close()
    store.close()
    print(json.dumps({"state": state, "stopped": stopped, "wall_s": ended - started,
                      "create_s": created - started, "drive_s": ended - created,
                      "cpu_drive_s": cpu_drive, "waits_s": waits.seconds, "waits_n": waits.count}),
          flush=True)


def child_resume(args: argparse.Namespace) -> None:
    """Drive an existing run, telling the parent when `drive()` is called; the parent kills us."""
    main_at = time.time()
    logs.configure("warning")
    store = Store(args.db)
    runner = Driver(store, settings_for(args.url, args.db, args.concurrency))
    print(json.dumps({"main_at": main_at, "drive_at": time.time()}), flush=True)
    runner.drive(args.run_id)


def child_work(args: argparse.Namespace) -> None:
    """Work on a shared run beside other workers, as `cftrunner resume RUN_ID --worker` does; print
    one JSON line; exit 1 if the run stopped."""
    logs.configure("warning")
    store = Store(args.db)
    waits = Waits()
    runner = Driver(store, settings_for(args.url, args.db, args.concurrency), sleep=waits.sleep)
    work_at = time.time()
    cpu = time.process_time()
    stopped = None
    try:
        state = runner.work(args.run_id).state.value
    except RunStopped as exc:
        stopped, state = exc.message, store.run(args.run_id).state.value
    cpu_work = time.process_time() - cpu
    runner.client.close()
    store.close()
    print(json.dumps({"state": state, "stopped": stopped, "work_at": work_at, "ended_at": time.time(),
                      "cpu_work_s": cpu_work, "waits_s": waits.seconds, "waits_n": waits.count}),
          flush=True)
    if stopped:
        raise SystemExit(1)


# -- the parent ----------------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CFTRUNNER_", "API_KEY", "PREMAI_API_KEY"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


# The child's resources, as a small go-between process reports them (see MEASURE_CHILD below):
# started straight from this process, a child's ru_maxrss would start at this process's peak.
USAGE_CHILD = (
    "import json, resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "open(sys.argv[1], 'w').write(json.dumps({'ru_maxrss': u.ru_maxrss, 'ru_utime': u.ru_utime, "
    "'ru_stime': u.ru_stime})); sys.exit(code)")


@dataclasses.dataclass(frozen=True)
class Usage:
    """What the go-between saw its child use: peak RSS (KiB on Linux) and CPU seconds."""

    ru_maxrss: int
    ru_utime: float
    ru_stime: float


def run_child(argv: list[str], tmp: Path) -> tuple[dict[str, Any], Usage]:
    """Run `bench.py --child ...` to its end, through a go-between; its JSON line and its own
    resource usage."""
    out_path, err_path, usage_path = tmp / "child.out", tmp / "child.err", tmp / "child.usage"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        code = subprocess.call([sys.executable, "-c", USAGE_CHILD, str(usage_path),
                                sys.executable, __file__, "--child", *argv], stdout=out,
                               stderr=err, env=child_env(), cwd=tmp)
    lines = out_path.read_text().strip().splitlines()
    if code != 0 or not lines:
        tail = err_path.read_text()[-3000:]
        raise SystemExit(f"bench child {' '.join(argv)} exited {code}:\n{tail}")
    return json.loads(lines[-1]), Usage(**json.loads(usage_path.read_text()))


def maxrss_bytes(usage: Usage | resource.struct_rusage) -> int:
    return usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024


def cycle(tmp: Path, name: str, n: int, latency: float, concurrency: int,
          page_size: int | None, defaults: bool = False) -> dict[str, Any]:
    """One whole cycle in a child against a fresh sandbox here; the figures of both sides. With
    `defaults`, the child runs at the default settings (but concurrency) against a sandbox whose
    corrections take DEFAULTS_PROCESSING_S and whose recommendations are ready at the
    DEFAULTS_RECS_LOOKS-th look; that deliberate delay of the platform is counted in the bound."""
    folder = tmp / name
    folder.mkdir()
    db = f"sqlite:///{folder}/state.db"
    options: dict[str, Any] = {"page_size": page_size} if page_size else {}
    processing, recs_polls = ((DEFAULTS_PROCESSING_S, DEFAULTS_RECS_LOOKS - 1) if defaults
                              else (PROCESSING_SECONDS, 1))
    with Sandbox(latency=latency, processing_seconds=processing, recs_polls=recs_polls,
                 **options) as sandbox:
        child, usage = run_child(["cycle", "--url", sandbox.url, "--db", db, "--n", str(n),
                                  "--concurrency", str(concurrency),
                                  *(["--defaults"] if defaults else [])], folder)
        counts = sandbox.counts()
    requests: dict[str, int] = dict(sorted(counts["requests"].items(), key=lambda kv: -kv[1]))
    total = sum(requests.values())
    run_level = sum(c for route, c in requests.items() if route in RUN_LEVEL_ROUTES)
    wall, waits = child["wall_s"], child["waits_s"]
    busy = max(wall - waits, 1e-9)
    bound = total * latency / concurrency + (DEFAULTS_PROCESSING_S if defaults else 0.0)
    tight = (total - run_level) * latency / concurrency + run_level * latency
    return {
        "n": n, "latency_s": latency, "concurrency": concurrency, "state": child["state"],
        "stopped": child["stopped"], "wall_s": wall, "create_s": child["create_s"],
        "requests": requests, "requests_total": total, "run_level_requests": run_level,
        "traces": counts["traces"], "jobs": counts["jobs"],
        "waits_s": waits, "waits_n": child["waits_n"],
        "bound_s": bound, "efficiency": bound / wall if latency else None,
        "efficiency_excluding_waits": bound / busy if latency else None,
        "bound_run_level_serial_s": tight,
        "efficiency_run_level_serial": tight / wall if latency else None,
        "in_flight": total * latency / busy if latency else None,
        "most_in_flight": counts.get("most_in_flight"),
        "wall_per_item_s": wall / n, "wall_per_request_s": wall / max(total, 1),
        "cpu_drive_s": child["cpu_drive_s"], "cpu_per_item_s": child["cpu_drive_s"] / n,
        "cpu_process_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": maxrss_bytes(usage) / 1e6,
    }


@contextlib.contextmanager
def receipts(sandbox: Sandbox) -> Iterator[tuple[threading.Event, list[tuple[float, str]]]]:
    """Every request the sandbox receives from now on, as (perf_counter, route) in the order
    received, and an event set at the first: a hook on its request ledger, which the server calls
    on receipt, before the latency sleep."""
    seen = threading.Event()
    got: list[tuple[float, str]] = []
    ledger = sandbox.world.ledger
    received = ledger.received

    def hooked(route: str) -> None:
        got.append((time.perf_counter(), route))
        seen.set()
        received(route)

    ledger.received = hooked  # type: ignore[method-assign]
    try:
        yield seen, got
    finally:
        del ledger.received  # the class's method again


def time_to_first_request(sandbox: Sandbox, command: list[str], env: dict[str, str],
                          cwd: Path) -> dict[str, Any]:
    """Spawn `command`; seconds from spawning it to the sandbox's first request, then stop it."""
    with receipts(sandbox) as (seen, first):
        return _time_to_first_request(seen, first, command, env, cwd)


def _time_to_first_request(seen: threading.Event, first: list[tuple[float, str]],
                           command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    spawned = time.perf_counter()
    spawned_at = time.time()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not seen.wait(0.002):
        if proc.poll() is not None or time.perf_counter() - spawned > 120:
            break
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if not first:
        raise SystemExit(f"{' '.join(command)} sent no request (exit {proc.returncode}):\n{err[-3000:]}")
    at, route = first[0]
    return {"seconds": at - spawned, "route": route, "spawned_at": spawned_at,
            "first_at": spawned_at + (at - spawned), "stdout": out}


def resume(tmp: Path, n: int, concurrency: int) -> dict[str, Any]:
    folder = tmp / "resume"
    folder.mkdir()
    db = f"sqlite:///{folder}/state.db"
    with Sandbox(processing_seconds=PROCESSING_SECONDS, recs_polls=1) as sandbox:
        store = Store(db)
        runner = Driver(store, settings_for(sandbox.url, db, concurrency))
        started = time.perf_counter()
        run_id = runner.create(spec(), prompts(n)).id
        create_s = time.perf_counter() - started
        runner.ownership.release()
        runner.client.close()
        store.close()
        env = {**child_env(), "API_KEY": DEFAULT_API_KEY, "CFTRUNNER_BASE_URL": sandbox.url,
               "CFTRUNNER_DB": db, "CFTRUNNER_LOG_LEVEL": "warning",
               "CFTRUNNER_POLL_INTERVAL": str(POLL_INTERVAL),
               "CFTRUNNER_CONCURRENCY": str(concurrency)}
        command = [sys.executable, "-m", "cftrunner", "resume", run_id]
        early = time_to_first_request(sandbox, command, env, folder)
        cli = time_to_first_request(sandbox, command, env, folder)
        split = time_to_first_request(
            sandbox, [sys.executable, __file__, "--child", "resume", "--url", sandbox.url,
                      "--db", db, "--run-id", run_id, "--concurrency", str(concurrency)],
            child_env(), folder)
    marks = json.loads(split["stdout"].strip().splitlines()[0])
    return {
        "n": n, "create_s": create_s, "seconds": cli["seconds"], "first_route": cli["route"],
        "early": {"seconds": early["seconds"], "first_route": early["route"]},
        "split": {"seconds": split["seconds"], "first_route": split["route"],
                  "interpreter_and_imports_s": marks["main_at"] - split["spawned_at"],
                  "setup_s": marks["drive_at"] - marks["main_at"],
                  "drive_to_first_request_s": split["first_at"] - marks["drive_at"]},
    }


# -- workers on PostgreSQL ----------------------------------------------------------------------

def postgres_unusable(admin_url: str) -> str | None:
    """Why no database can be made at `admin_url` (a reason for "skipped: ..."), or None."""
    try:
        url = make_url(admin_url)
    except sa.exc.ArgumentError:
        return f"--pg-url {admin_url!r} is not a database URL"
    if url.get_backend_name() != "postgresql":
        return f"--pg-url {url.render_as_string()} is not a PostgreSQL URL"
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'cftrunner[postgres]')"
    try:
        with psycopg.connect(libpq(admin_url), autocommit=True, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or ["?"])[0]
        return f"PostgreSQL at {url.render_as_string()} is unreachable: {reason}"
    return None


def libpq(url: str) -> str:
    """The URL as psycopg takes it: without SQLAlchemy's `+driver`."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on `admin_url`'s server, dropped afterwards; its URL."""
    import psycopg
    from psycopg import sql

    def execute(statement: str) -> None:
        with psycopg.connect(libpq(admin_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))

    execute("DROP DATABASE IF EXISTS {}")  # a leftover of an interrupted benchmark
    execute("CREATE DATABASE {}")
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        execute("DROP DATABASE IF EXISTS {} WITH (FORCE)")


def start_workers(k: int, url: str, db: str, run_id: str, concurrency: int,
                  folder: Path) -> list[tuple[subprocess.Popen[bytes], float]]:
    """k `bench.py --child work` processes started at once, each with the time it was started."""
    started = []
    for i in range(k):
        with (folder / f"worker-{i}.out").open("wb") as out, \
                (folder / f"worker-{i}.err").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--child", "work", "--url", url, "--db", db,
                 "--run-id", run_id, "--concurrency", str(concurrency)],
                stdout=out, stderr=err, env=child_env(), cwd=folder)
        started.append((proc, time.time()))
    return started


def wait_workers(procs: list[subprocess.Popen[bytes]],
                 bound: float) -> dict[int, tuple[float, resource.struct_rusage]]:
    """Wait for every process (killing those still running after `bound` s); for each pid, the
    perf_counter time it was seen to end and its own resource usage."""
    ended: dict[int, tuple[float, resource.struct_rusage]] = {}
    deadline = time.perf_counter() + bound
    while len(ended) < len(procs):
        late = time.perf_counter() > deadline
        for proc in procs:
            if proc.pid in ended:
                continue
            if late:
                proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0 if late else os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                ended[proc.pid] = (time.perf_counter(), usage)
        time.sleep(0.005)
    return ended


def once_problems(counts: dict[str, Any], n: int) -> list[str]:
    """How the sandbox's effects differ from exactly once each (as tests' assert_exactly_once)."""
    problems = []
    if counts["traces"] != n:
        problems.append(f"traces {counts['traces']:,}, not {n:,}")
    additions = sorted(counts["additions"].values())
    if additions != [1] * n:
        twice = sum(1 for a in additions if a > 1)
        problems.append(f"additions on {len(additions):,} traces, {twice:,} of them more than once")
    for kind in ("snapshots", "jobs"):
        if counts[kind] != 1:
            problems.append(f"{kind} {counts[kind]}, not 1")
    if list(counts["recommendations_generated"].values()) != [1]:
        problems.append(f"recommendations generated {counts['recommendations_generated']}")
    return problems


def workers_cycle(tmp: Path, admin_url: str, k: int, n: int, latency: float, concurrency: int,
                  page_size: int | None) -> dict[str, Any]:
    """A run of n items created on a fresh database, then k worker processes started at once."""
    folder = tmp / f"workers-{k}"
    folder.mkdir()
    options: dict[str, Any] = {"page_size": page_size} if page_size else {}
    load_start = os.getloadavg()[0]
    with fresh_database(admin_url, f"cftrunner_bench_{k}") as db, \
            Sandbox(latency=latency, processing_seconds=PROCESSING_SECONDS, recs_polls=1,
                    **options) as sandbox:
        store = Store(db)
        runner = Driver(store, settings_for(sandbox.url, db, concurrency))
        begun = time.perf_counter()
        run_id = runner.create(spec(), prompts(n)).id
        create_s = time.perf_counter() - begun
        runner.ownership.release()
        runner.client.close()
        sandbox_cpu = time.process_time()  # the sandbox's threads, mostly, from here on
        with receipts(sandbox) as (_, got):
            started = time.perf_counter()
            procs = start_workers(k, sandbox.url, db, run_id, concurrency, folder)
            ended = wait_workers([proc for proc, _ in procs], bound=600)
        wall = max(at for at, _ in ended.values()) - started
        sandbox_cpu = time.process_time() - sandbox_cpu
        counts = sandbox.counts()
        state = store.run(run_id).state.value
        joined = sum(1 for e in store.events(run_id) if e.kind == "worker_joined")
        store.close()
    per_worker: list[dict[str, Any]] = []
    for i, (proc, spawned_at) in enumerate(procs):
        at, usage = ended[proc.pid]
        lines = (folder / f"worker-{i}.out").read_text().strip().splitlines()
        child = json.loads(lines[-1]) if lines else {}
        per_worker.append({
            "exit": proc.returncode, "state": child.get("state"), "stopped": child.get("stopped"),
            "wall_s": at - started, "cpu_s": usage.ru_utime + usage.ru_stime,
            "waits_s": child.get("waits_s"), "peak_rss_mb": maxrss_bytes(usage) / 1e6,
            "startup_s": child["work_at"] - spawned_at if child else None,
            "stderr_tail": (folder / f"worker-{i}.err").read_text()[-2000:] if proc.returncode else ""})
    requests: dict[str, int] = dict(sorted(counts["requests"].items(), key=lambda kv: -kv[1]))
    total = sum(requests.values())
    run_level = sum(c for route, c in requests.items() if route in RUN_LEVEL_ROUTES)
    slots = k * concurrency
    bound = total * latency / slots
    problems = once_problems(counts, n)
    startup = max((w["startup_s"] for w in per_worker if w["startup_s"] is not None), default=0.0)
    return {
        "workers": k, "concurrency": concurrency, "n": n, "latency_s": latency, "state": state,
        "create_s": create_s, "wall_s": wall, "startup_s": startup,
        "requests": requests, "requests_total": total, "run_level_requests": run_level,
        "bound_s": bound, "efficiency": bound / wall,
        "efficiency_excluding_startup": bound / max(wall - startup, 1e-9),
        "bound_run_level_serial_s": (total - run_level) * latency / slots + run_level * latency,
        "items_per_s": n / wall, "exactly_once_problems": problems, "exactly_once": not problems,
        "exit_codes": [w["exit"] for w in per_worker],
        "all_exited_0": all(w["exit"] == 0 for w in per_worker), "joined": joined,
        "per_worker": per_worker, "sandbox_cpu_s": sandbox_cpu, "phases": phases(got, started),
        "loadavg_1m_start": load_start, "loadavg_1m_end": os.getloadavg()[0],
    }


ITEM_ROUTES = frozenset({"chat", "trace_create", "add_to_dataset"})


def phases(got: list[tuple[float, str]], started: float) -> dict[str, float] | None:
    """A workers cycle's parts, as the sandbox received its requests: the start (to the first
    request), the items (the first item request to the last addition), and the run-level steps
    after them (the last addition to the last request: the job), of which the corrections check
    (to its last page read)."""
    items = [at for at, route in got if route in ITEM_ROUTES]
    added = [at for at, route in got if route == "add_to_dataset"]
    if not items or not added:
        return None
    last_added = max(added)
    checks = [at for at, route in got if route == "trace_list" and at > last_added]
    return {"start_s": min(at for at, _ in got) - started, "items_s": last_added - min(items),
            "run_level_s": max(at for at, _ in got) - last_added,
            "corrections_s": max(checks) - last_added if checks else 0.0}


def workers(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """k = 1, 2, 3 workers on the same run size; or why the phase was skipped."""
    reason = postgres_unusable(args.pg_url)
    if reason:
        print(f"... workers skipped: {reason}", file=sys.stderr, flush=True)
        return {"skipped": reason}
    cycles = []
    for k in WORKER_COUNTS:
        print(f"... workers k={k}", file=sys.stderr, flush=True)
        cycles.append(workers_cycle(tmp, args.pg_url, k, args.workers_n, args.latency,
                                    args.worker_concurrency, args.page_size))
    for figures in cycles:
        figures["speedup"] = cycles[0]["wall_s"] / figures["wall_s"]
        one, this = cycles[0]["phases"], figures["phases"]
        figures["items_speedup"] = one["items_s"] / this["items_s"] if one and this else None
    return {"admin_url": make_url(args.pg_url).render_as_string(), "n": args.workers_n,
            "latency_s": args.latency, "concurrency": args.worker_concurrency, "cycles": cycles,
            "ok": all(c["exactly_once"] and c["all_exited_0"] and c["state"] == "LAUNCHED"
                      for c in cycles)}


# -- export --------------------------------------------------------------------------------------

# A process started straight from this one (vfork, then exec) starts its ru_maxrss at this
# process's peak, which Linux carries over the exec: the command is run from a small process of
# its own, which reports its child's peak (RUSAGE_CHILDREN) and wall time as one JSON line.
MEASURE_CHILD = (
    "import json, resource, subprocess, sys, time; started = time.perf_counter(); "
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "wall = time.perf_counter() - started; usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(json.dumps({'exit': code, 'wall_s': wall, 'maxrss': usage.ru_maxrss, "
    "'cpu_s': usage.ru_utime + usage.ru_stime}))")


def export(tmp: Path, n: int) -> dict[str, Any]:
    """6. A run of n judged items (prompts of some 750 characters, the judge's feedback and
    reasoning of some 400 each, a completion or two per item), made directly in an SQLite file;
    then `python -m cftrunner export RUN --format F --output FILE` for each format, and
    `cftrunner status RUN` for the memory any command takes; every item checked to come out
    once, in order."""
    import csv

    from cftrunner.clock import utcnow
    from cftrunner.store.schema import completions, items

    folder = tmp / "export"
    folder.mkdir()
    db = f"sqlite:///{folder}/state.db"
    store = Store(db)
    runner = Driver(store, settings_for("http://127.0.0.1:9", db, 1))  # no request is made
    begun = time.perf_counter()
    text = ("Task: Check if there is unsafe content in 'Agent' messages in conversations "
            "according to our safety policy. " * 7)
    run_id = runner.create(spec(), (f"{text}(case {i})" for i in range(n))).id
    runner.ownership.release()
    runner.client.close()
    position = sa.cast(items.c.position, sa.String)
    with store.engine.begin() as conn:
        conn.execute(items.update().where(items.c.run_id == run_id).values(
            stage="ADDED", answer="unsafe\nS4", judge_attempts=1, trace_id="trace-" + position,
            score=sa.cast(items.c.position % 101, sa.Float) / 100,
            feedback="The answer names the right category and says why. " * 8 + position,
            reasoning="The conversation asks for help the policy lists as unsafe. " * 7 + position))
        for kind in ("generate", "judge"):
            conn.execute(completions.insert().from_select(
                ["run_id", "item_id", "kind", "attempt", "outcome", "total_tokens", "at"],
                sa.select(items.c.run_id, items.c.id, sa.literal(kind), sa.literal(1),
                          sa.literal("ok"), sa.literal(150),
                          sa.literal(utcnow(), type_=completions.c.at.type))
                .where(items.c.run_id == run_id)))
    store.close()
    create_s = time.perf_counter() - begun
    env = {**child_env(), "CFTRUNNER_DB": db, "CFTRUNNER_LOG_LEVEL": "warning"}

    def measured(*args: str) -> dict[str, Any]:
        result = subprocess.run([sys.executable, "-c", MEASURE_CHILD, sys.executable, "-m",
                                 "cftrunner", *args], env=env, cwd=folder, capture_output=True,
                                text=True, timeout=600)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        if figures["exit"] != 0:
            raise SystemExit(f"cftrunner {' '.join(args)} exited {figures['exit']}:\n"
                             f"{result.stderr[-3000:]}")
        figures["peak_rss_mb"] = figures.pop("maxrss") * (1 if sys.platform == "darwin"
                                                          else 1024) / 1e6
        return figures

    formats = {}
    for fmt in ("jsonl", "csv"):
        out = folder / f"items.{fmt}"
        figures = measured("export", run_id, "--format", fmt, "--output", str(out))
        with out.open(encoding="utf-8", newline="") as written:
            if fmt == "jsonl":
                order = [json.loads(line)["item"] for line in written]
            else:
                order = [int(row["item"]) for row in csv.DictReader(written)]
        formats[fmt] = {**figures, "items_per_s": n / figures["wall_s"],
                        "mb_written": out.stat().st_size / 1e6,
                        "each_once_in_order": order == list(range(n))}
        out.unlink()
    return {"n": n, "create_s": create_s, "formats": formats,
            "status": measured("status", run_id)}


# -- printing ------------------------------------------------------------------------------------

def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def at_target(figures: dict[str, Any]) -> str:
    exact = (figures["n"], figures["latency_s"], figures["concurrency"]) == (1000, 0.05, 16)
    return "" if exact else "; these are not the target's parameters"


def print_cycle(title: str, f: dict[str, Any], target: bool) -> None:
    print(f"\n{title}: N={f['n']:,}, latency {f['latency_s'] * 1000:g} ms, "
          f"concurrency {f['concurrency']}")
    end = f"state {f['state']}" + (f" (stopped: {f['stopped']})" if f["stopped"] else "")
    print(f"  {end}; traces {f['traces']:,}, jobs {f['jobs']}")
    print(f"  wall time          {f['wall_s']:8.2f} s   (of which create {f['create_s']:.2f} s)")
    routes = ", ".join(f"{route} {count:,}" for route, count in f["requests"].items())
    print(f"  requests           {f['requests_total']:8,}     {routes}")
    lat = f["latency_s"]
    print(f"  bound              {f['bound_s']:8.2f} s   = {f['requests_total']:,} x {lat:g} s "
          f"/ {f['concurrency']}")
    print(f"  deliberate waits   {f['waits_s']:8.2f} s   in {f['waits_n']:,} sleeps (polls, backoff)")
    if f["efficiency"] is None:
        return
    goal = (f" (target >= {TARGET_EFFICIENCY} at concurrency 16, 50 ms, N = 1,000: "
            f"{met(f['efficiency'] >= TARGET_EFFICIENCY)}{at_target(f)})") if target else ""
    print(f"  efficiency         {f['efficiency']:8.3f}     = bound / wall{goal}")
    print(f"  excluding waits    {f['efficiency_excluding_waits']:8.3f}     = bound / (wall - waits)")
    print(f"  in flight, average {f['in_flight']:8.2f}     = requests x latency / (wall - waits), "
          f"of {f['concurrency']} allowed")
    if f.get("most_in_flight") is not None:
        print(f"  in flight, most    {f['most_in_flight']:8,}     at once at the sandbox, of "
              f"{f['concurrency']} allowed")
    run_level = f["run_level_requests"]
    if f["concurrency"] > 1:
        print(f"  run-level requests {run_level:8,}     (made once per run or per poll, not per "
              f"item); counting them as one at a time, the bound is "
              f"{f['bound_run_level_serial_s']:.2f} s and efficiency "
              f"{f['efficiency_run_level_serial']:.3f}")
    print(f"  per item           {f['wall_per_item_s'] * 1000:8.2f} ms;  per request "
          f"{f['wall_per_request_s'] * 1000:.2f} ms")


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    conc, seq = figures.get("concurrent"), figures.get("sequential")
    if conc:
        print_cycle("1. Concurrent cycle", conc, target=True)
        if conc["in_flight"] is not None and conc["concurrency"] > 1 and conc["in_flight"] < 1.5:
            print("  note: about one request in flight; concurrency is not in effect in this version")
    dflt = figures.get("defaults")
    if dflt:
        print_cycle(f"1b. The same cycle at the default settings (corrections take "
                    f"{DEFAULTS_PROCESSING_S:g} s, recommendations ready at look "
                    f"{DEFAULTS_RECS_LOOKS}; the bound counts the {DEFAULTS_PROCESSING_S:g} s)",
                    dflt, target=False)
        if dflt["efficiency"] is not None:
            print(f"  at the defaults    {dflt['efficiency']:8.3f}     = bound / wall (target >= "
                  f"{TARGET_DEFAULTS_EFFICIENCY} at N = 1,000, 50 ms, concurrency 16: "
                  f"{met(dflt['efficiency'] >= TARGET_DEFAULTS_EFFICIENCY)}{at_target(dflt)})")
    if seq:
        print_cycle("2. The same cycle one request at a time (the tutorial's way)", seq,
                    target=False)
        if conc:
            note = (f" (sequential N = {seq['n']:,} rather than {conc['n']:,}, to keep the run "
                    "short: compare per-item times)" if seq["n"] != conc["n"] else "")
            print(f"  ratio, per item    {figures['ratio_per_item']:8.2f} x   sequential / "
                  f"concurrent per-item wall time{note}")
            print(f"  ratio, wall times  {figures['ratio_wall']:8.2f} x   sequential / concurrent")
        if "defaults_ratio_per_item" in figures:
            ratio = figures["defaults_ratio_per_item"]
            print(f"  ratio at defaults  {ratio:8.2f} x   sequential / per-item wall time at the "
                  f"defaults (1b) (target >= {TARGET_RATIO:g}: {met(ratio >= TARGET_RATIO)})")
    zero = figures.get("zero_latency")
    if zero:
        print(f"\n3. CPU and peak memory at zero latency: N={zero['n']:,}, concurrency "
              f"{zero['concurrency']}; state {zero['state']}"
              + (f" (stopped: {zero['stopped']})" if zero["stopped"] else ""))
        cpu_ok = "" if zero["n"] != 1_000 else (
            f"; target <= {TARGET_CPU_MS:g} ms at N = 1,000: "
            f"{met(zero['cpu_per_item_s'] * 1000 <= TARGET_CPU_MS)}")
        print(f"  CPU per item       {zero['cpu_per_item_s'] * 1000:8.3f} ms  = process_time() "
              f"around drive(), {zero['cpu_drive_s']:.2f} s / {zero['n']:,} (the runner's process "
              f"only{cpu_ok})")
        if not args.skip_memory:
            ok = zero["peak_rss_mb"] < TARGET_MEMORY_MB
            note = "" if zero["n"] == 20_000 else "; N is not the target's 20,000"
            print(f"  peak RSS           {zero['peak_rss_mb']:8.1f} MB  of the child process running "
                  f"the cycle (target < {TARGET_MEMORY_MB:g} MB at N = 20,000: {met(ok)}{note})")
        print(f"  wall time          {zero['wall_s']:8.2f} s   ({zero['requests_total']:,} requests: "
              + ", ".join(f"{route} {count:,}" for route, count in zero["requests"].items()) + ")")
    res = figures.get("resume")
    if res:
        split = res["split"]
        ok = res["seconds"] < TARGET_RESUME_S
        note = "" if res["n"] == 20_000 else "; N is not the target's 20,000"
        print(f"\n4. Resume to the first request: a run of N={res['n']:,} items "
              f"(created in {res['create_s']:.2f} s)")
        print(f"  first resume       {res['early']['seconds']:8.2f} s   to its first request "
              f"({res['early']['first_route']}, before any item is loaded); then stopped by SIGTERM")
        print(f"  `cftrunner resume` {res['seconds']:8.2f} s   from spawning the process to the first "
              f"request ({res['first_route']}) (target < {TARGET_RESUME_S:g} s: {met(ok)}{note})")
        print(f"  again, split       {split['seconds']:8.2f} s   = interpreter and imports "
              f"{split['interpreter_and_imports_s']:.2f} s + setup {split['setup_s']:.2f} s + "
              f"drive() to the first request ({split['first_route']}) "
              f"{split['drive_to_first_request_s']:.2f} s")
    if "workers" in figures:
        print_workers(figures["workers"])
    if "export" in figures:
        print_export(figures["export"])


def print_export(e: dict[str, Any]) -> None:
    note = "" if e["n"] == 20_000 else "; N is not the target's 20,000"
    print(f"\n6. Export: N={e['n']:,} judged items (made in {e['create_s']:.2f} s), each "
          "`python -m cftrunner export RUN --format F --output FILE` from spawning to exit, on "
          "an SQLite file")
    for fmt, f in e["formats"].items():
        ok = f["peak_rss_mb"] < TARGET_EXPORT_MEMORY_MB
        print(f"  {fmt:<5} wall {f['wall_s']:6.2f} s  {f['items_per_s']:8,.0f} items/s  CPU "
              f"{f['cpu_s']:5.2f} s  {f['mb_written']:5.1f} MB written  peak RSS "
              f"{f['peak_rss_mb']:5.1f} MB (target < {TARGET_EXPORT_MEMORY_MB:g} MB: {met(ok)}"
              f"{note}); every item once, in order: {yes(f['each_once_in_order'])}")
    status = e["status"]
    print(f"  for comparison, `cftrunner status RUN` on the same database: peak RSS "
          f"{status['peak_rss_mb']:.1f} MB, {status['wall_s']:.2f} s")


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def print_workers(w: dict[str, Any]) -> None:
    print("\n5. Workers on PostgreSQL: ", end="")
    if "skipped" in w:
        print(f"skipped: {w['skipped']}")
        return
    print(f"N={w['n']:,}, latency {w['latency_s'] * 1000:g} ms, concurrency {w['concurrency']} "
          f"per worker; k processes each calling `Driver.work` (as `cftrunner resume RUN_ID --worker` "
          f"does), started at once, on a fresh database on {w['admin_url']}")
    print("  wall = from starting the workers to the run LAUNCHED and every worker ended; "
          "bound = requests x latency / (k x concurrency); efficiency = bound / wall; "
          "startup = the slowest worker's spawn to Driver.work()")
    print(f"  {'k':>2} {'wall s':>8} {'startup s':>9} {'requests':>9} {'bound s':>8} {'effic.':>7} "
          f"{'excl. startup':>13} {'items/s':>8} {'speed-up':>8}  {'load 1m':>7}")
    for c in w["cycles"]:
        print(f"  {c['workers']:>2} {c['wall_s']:8.2f} {c['startup_s']:9.2f} {c['requests_total']:9,} "
              f"{c['bound_s']:8.2f} {c['efficiency']:7.3f} {c['efficiency_excluding_startup']:13.3f} "
              f"{c['items_per_s']:8.1f} {c['speedup']:7.2f}x  {c['loadavg_1m_end']:7.2f}")
    print("  as the sandbox received the requests: start = to the first request; items = the first "
          "item request to the last addition; run-level = from there to the job, corrections check "
          "included; items speed-up = the items at k = 1 / the items at k")
    for c in w["cycles"]:
        p = c["phases"]
        if p is None:
            print(f"  {c['workers']:>2} (no addition received)")
            continue
        speedup = "?" if c["items_speedup"] is None else f"{c['items_speedup']:.2f}x"
        print(f"  {c['workers']:>2} start {p['start_s']:5.2f} s, items {p['items_s']:6.2f} s "
              f"(speed-up {speedup}), run-level {p['run_level_s']:5.2f} s "
              f"(corrections check {p['corrections_s']:.2f} s)")
    for c in w["cycles"]:
        k = c["workers"]
        routes = ", ".join(f"{route} {count:,}" for route, count in c["requests"].items())
        print(f"  k={k}: requests {routes}")
        print(f"       counting the {c['run_level_requests']:,} run-level requests one at a time, the "
              f"bound is {c['bound_run_level_serial_s']:.2f} s; run created in {c['create_s']:.2f} s "
              f"(not in the wall time); the sandbox's CPU {c['sandbox_cpu_s']:.2f} s")
        once = "; ".join(c["exactly_once_problems"]) or (
            f"traces {c['n']:,}, one addition per trace, one snapshot, one job")
        print(f"       run {c['state']}; every effect exactly once: {yes(c['exactly_once'])} ({once}); "
              f"every worker exited 0: {yes(c['all_exited_0'])} (exit codes "
              f"{', '.join(map(str, c['exit_codes']))}; {c['joined']} joined)")
        for i, pw in enumerate(c["per_worker"]):
            startup = "?" if pw["startup_s"] is None else f"{pw['startup_s']:.2f} s"
            waits = "?" if pw["waits_s"] is None else f"{pw['waits_s']:.2f} s"
            print(f"       worker {i + 1}: exit {pw['exit']} after {pw['wall_s']:.2f} s, the run "
                  f"{pw['state']} as it left (startup {startup}), CPU {pw['cpu_s']:.2f} s, "
                  f"waits {waits}, peak RSS {pw['peak_rss_mb']:.0f} MB"
                  + (f", stopped: {pw['stopped']}" if pw["stopped"] else ""))
            if pw["stderr_tail"]:
                print("         " + pw["stderr_tail"].strip().replace("\n", "\n         "))


# -- the entry point -----------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="items in the concurrent cycle (1000)")
    parser.add_argument("--latency", type=float, default=None,
                        help="seconds the sandbox adds to every request (0.05)")
    parser.add_argument("--concurrency", type=int, default=16, help="Settings.concurrency (16)")
    parser.add_argument("--sequential-n", type=int, default=None,
                        help="items in the one-at-a-time cycle (200, at most --n)")
    parser.add_argument("--memory-n", type=int, default=None, help="items in the memory cycle (20000)")
    parser.add_argument("--resume-n", type=int, default=None, help="items in the resumed run (20000)")
    parser.add_argument("--page-size", type=int, default=None,
                        help="traces per page of the sandbox's trace list (the sandbox's default)")
    parser.add_argument("--skip-defaults", action="store_true",
                        help="no cycle at the default settings (1b)")
    parser.add_argument("--defaults", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-sequential", action="store_true",
                        help="no one-request-at-a-time comparison")
    parser.add_argument("--skip-memory", action="store_true",
                        help="measure CPU at zero latency with --n items, not the memory cycle")
    parser.add_argument("--skip-resume", action="store_true", help="no resume timing")
    parser.add_argument("--workers-n", type=int, default=None,
                        help="items in the run shared by worker processes (600)")
    parser.add_argument("--worker-concurrency", type=int, default=8,
                        help="Settings.concurrency of each worker process (8)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL,
                        help="PostgreSQL URL on which a database per measurement is created and "
                             f"dropped ({DEFAULT_PG_URL})")
    parser.add_argument("--skip-workers", action="store_true",
                        help="no measurement of worker processes on PostgreSQL")
    parser.add_argument("--export", action="store_true",
                        help="measure only the export of --export-n items (6), nothing else")
    parser.add_argument("--export-n", type=int, default=None,
                        help="items in the exported run (20000)")
    parser.add_argument("--quick", action="store_true",
                        help="small N and 20 ms latency for a smoke run (under a minute)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object of all figures")
    parser.add_argument("--child", choices=("cycle", "resume", "work"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"n": 60 if quick else 1000, "latency": 0.02 if quick else 0.05,
                "memory_n": 1000 if quick else 20_000, "resume_n": 2000 if quick else 20_000,
                "workers_n": 60 if quick else 600, "export_n": 2000 if quick else 20_000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.sequential_n is None:
        args.sequential_n = min(30 if quick else 200, args.n)
    if min(args.n, args.sequential_n, args.memory_n, args.resume_n, args.workers_n,
           args.export_n, args.concurrency, args.worker_concurrency) < 1:
        parser.error("counts and concurrencies must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child == "cycle":
        return child_cycle(args)
    if args.child == "resume":
        return child_resume(args)
    if args.child == "work":
        return child_work(args)
    logs.configure("warning")
    started = time.perf_counter()
    page = f"page_size={args.page_size}" if args.page_size else "page_size=sandbox default"
    print(f"cftrunner {cftrunner.__version__} benchmark: Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {platform.system()}")
    print(f"sandbox over HTTP on 127.0.0.1 in this process (processing_seconds={PROCESSING_SECONDS}, "
          f"recs_polls=1, {page}); each cycle in a child process on an SQLite file in a temp dir; "
          f"poll_interval={POLL_INTERVAL}")
    print("bound = sum over routes of requests x latency / concurrency: the wall time if every "
          "request's latency overlapped perfectly and nothing else took time. efficiency = bound / "
          "wall. Deliberate waits (the runner's sleeps) are in the wall time, not in the bound.")
    figures: dict[str, Any] = {"config": {
        "n": args.n, "latency_s": args.latency, "concurrency": args.concurrency,
        "sequential_n": args.sequential_n, "memory_n": args.memory_n, "resume_n": args.resume_n,
        "workers_n": args.workers_n, "export_n": args.export_n,
        "worker_concurrency": args.worker_concurrency, "page_size": args.page_size,
        "processing_seconds": PROCESSING_SECONDS,
        "poll_interval": POLL_INTERVAL, "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_1m_start": os.getloadavg()[0]}}
    phases: list[tuple[str, bool, Callable[[Path], Any]]] = [
        ("concurrent", True, lambda tmp: cycle(tmp, "concurrent", args.n, args.latency,
                                               args.concurrency, args.page_size)),
        ("defaults", not args.skip_defaults,
         lambda tmp: cycle(tmp, "defaults", args.n, args.latency, args.concurrency,
                           args.page_size, defaults=True)),
        ("sequential", not args.skip_sequential,
         lambda tmp: cycle(tmp, "sequential", args.sequential_n, args.latency, 1, args.page_size)),
        ("zero_latency", True,
         lambda tmp: cycle(tmp, "zero_latency", args.n if args.skip_memory else args.memory_n, 0.0,
                           args.concurrency, args.page_size)),
        ("resume", not args.skip_resume, lambda tmp: resume(tmp, args.resume_n, args.concurrency)),
        ("workers", not args.skip_workers, lambda tmp: workers(tmp, args)),
    ]
    if args.export:  # this figure alone
        phases = [("export", True, lambda tmp: export(tmp, args.export_n))]
    with tempfile.TemporaryDirectory(prefix="cftrunner-bench-") as tmp:
        for name, wanted, measure in phases:
            if wanted:
                print(f"... {name}", file=sys.stderr, flush=True)
                figures[name] = measure(Path(tmp))
    conc, seq = figures.get("concurrent"), figures.get("sequential")
    if conc and seq:
        figures["ratio_per_item"] = seq["wall_per_item_s"] / conc["wall_per_item_s"]
        figures["ratio_wall"] = seq["wall_s"] / conc["wall_s"]
    if figures.get("defaults") and seq:
        figures["defaults_ratio_per_item"] = (seq["wall_per_item_s"]
                                              / figures["defaults"]["wall_per_item_s"])
    figures["bench_wall_s"] = time.perf_counter() - started
    report(args, figures)
    figures["loadavg_1m_end"] = os.getloadavg()[0]
    print(f"\nbenchmark took {figures['bench_wall_s']:.1f} s; load average (1 min) "
          f"{figures['config']['loadavg_1m_start']:.2f} at the start, "
          f"{figures['loadavg_1m_end']:.2f} at the end (other work on the machine skews the figures)")
    if args.json:
        print(json.dumps(figures))
    if not figures.get("workers", {}).get("ok", True):
        raise SystemExit("workers on PostgreSQL: a worker failed or an effect did not happen exactly once")


if __name__ == "__main__":
    main()
