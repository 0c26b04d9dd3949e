"""`cftrunner tick` as cron runs it, with a config file: one cycle per interval, whatever happens."""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cftrunner import crashpoints
from cftrunner.sandbox import DEFAULT_PROJECT_ID, FaultRule, Sandbox
from cftrunner.store import Store
from tests.acceptance import test_ownership as ownership
from tests.acceptance.test_ownership import (
    BUSY,
    FEW_PROMPTS,
    HOST,
    Proc,
    assert_one_drove_and_the_others_were_turned_away,
    busy_with,
    one_error_line,
    received,
    report_overlap,
    requests_sent,
    run_together,
    utcnow,
    wait_until,
)
from tests.conftest import (
    MODEL,
    Cli,
    on_postgres,
    shown_status,
    state_stored,
    traces_made,
    write_prompts,
)

pytestmark = pytest.mark.slow

spawn = ownership.spawn  # the same fixture: processes, killed at the end if still running
KILLED = -signal.SIGKILL


@dataclass(frozen=True)
class Cron:
    """A sandbox, a config file naming it and a state database, and `tick --config FILE` to run."""

    sandbox: Sandbox
    cli: Cli
    config: Path
    db_url: str

    @property
    def args(self) -> tuple[str, ...]:
        return ("tick", "--config", str(self.config))

    def tick(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli.run(*self.args, env=env)

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, as `status --json --config FILE` shows them (read without a
        process of its own); none where nothing made the state database yet."""
        if not state_stored(self.db_url):
            return []
        shown: list[dict[str, Any]] = shown_status(self.db_url)
        return shown


# Each cycle takes the same prompts file again: what these tests count is runs and effects per
# interval (test_prompt_source.py has cycles over new prompts).
CONFIG_KEYS = {"interval": '"4s"', "failed_retry_interval": '"1h"', "reuse_after": '"0s"'}


def write_config(folder: Path, sandbox: Sandbox, keys: dict[str, str], tail: str = "",
                 db: str = "sqlite:///state/cron.db") -> Path:
    """A config file holding the whole cycle and where to find the API and the state database
    (a file relative to the config file's folder by default); `keys` are TOML values by key,
    in place of the defaults, `tail` is appended (sections)."""
    write_prompts(folder / "prompts.json", FEW_PROMPTS)
    values = {"project_id": f'"{DEFAULT_PROJECT_ID}"', "model_alias": f'"{MODEL}"',
              "prompts": '"prompts.json"', "base_url": f'"{sandbox.url}"', "db": f'"{db}"',
              **keys}
    lines = [f"{key} = {value}" for key, value in values.items()]
    config = folder / "cftrunner.toml"
    config.write_text("\n".join(lines) + "\n" + tail)
    return config


@pytest.fixture
def make_cron(make_sandbox: Callable[..., Sandbox], db_url: str,
              tmp_path: Path) -> Callable[..., Cron]:
    """A sandbox with the given options, and a config file on it whose `keys` override CONFIG_KEYS."""

    def make(keys: dict[str, str] | None = None, tail: str = "", **sandbox_options: Any) -> Cron:
        sandbox = make_sandbox(**sandbox_options)
        cli = Cli(sandbox, db_url, tmp_path)
        # The file, not the environment, says where the API and the state file are.
        del cli.env["CFTRUNNER_BASE_URL"], cli.env["CFTRUNNER_DB"]
        folder = tmp_path / "cron"
        folder.mkdir()
        if on_postgres():
            config = write_config(folder, sandbox, {**CONFIG_KEYS, **(keys or {})}, tail, db_url)
            return Cron(sandbox, cli, config, db_url)
        config = write_config(folder, sandbox, {**CONFIG_KEYS, **(keys or {})}, tail)
        return Cron(sandbox, cli, config, f"sqlite:///{folder}/state/cron.db")

    return make


def assert_cycles_launched_once(sandbox: Sandbox, cycles: int) -> None:
    """Every effect of every cycle happened once: traces, additions, snapshots, recommendations, jobs."""
    counts = sandbox.counts()
    assert traces_made(sandbox) == cycles * len(FEW_PROMPTS)
    assert sorted(counts["additions"].values()) == [1] * cycles * len(FEW_PROMPTS)
    assert counts["snapshots"] == cycles
    assert sorted(counts["recommendations_generated"].values()) == [1] * cycles
    assert counts["jobs"] == cycles


def launched_line(run_id: str) -> str:
    return f"run {run_id}: LAUNCHED job "


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- many ticks at once, and ticks killed at random ----------------------------------------------


def test_eight_ticks_at_once_create_one_run_launch_it_once_and_seven_exit_75(
        make_cron: Callable[..., Cron], spawn: Callable[..., Proc],
        record_property: Callable[[str, object], None]) -> None:
    cron = make_cron()

    procs = run_together(cron.cli, cron.sandbox, spawn, [cron.args] * 8)

    [run] = cron.runs()
    driver = assert_one_drove_and_the_others_were_turned_away(procs, run["run_id"])
    assert driver.stdout.splitlines()[0] == run["run_id"]
    report_overlap("tick x 8", procs, record_property)
    assert run["state"] == "LAUNCHED"
    assert_cycles_launched_once(cron.sandbox, 1)


INTERVAL = 4.0
TICKS = 12
# Twelve ticks 0.6 s apart span 6.6 s: past the first cycle's interval, short of a third one. On
# a busy host the first cycle may start late, or no kill land on a driver in them: cron goes on
# ticking then, until there are two cycles and a takeover, for at most MAX_TICKS.
SLOT = 0.6
MAX_TICKS = 60
# A tick costs about 0.7 CPU-seconds to start: more at once than this, and on a busy 2-core host
# they only queue for the processor, each taking tens of seconds, until no run finishes in time.
# Cron's next tick waits while this many are alive.
MAX_ALIVE = 4
TICK_LATENCY = 0.05  # a tick that drives a whole cycle then takes about 1.4 s
KILL_SHARE = 0.5
# A tick to be killed dies once the sandbox has had this many more requests than when the tick
# took the run's lease: by the run's progress, not by the clock or by other processes' requests, so
# the kill lands mid-cycle on a driver however slowly processes start on this host (a cycle of
# FEW_PROMPTS sends about 20). A tick that never drives is not killed.
KILL_AFTER_REQUESTS = (1, 12)
# Seeds whose first tick, the one that starts the first cycle, is among those killed.
SEEDS = (1, 3)


class Leases:
    """Who holds the newest run's lease, read at most every POLL seconds through one store: the
    sandbox serves from the test's own process, and a tighter loop would slow it down. The store
    is opened once a model was asked for an answer, so a run exists: the test never makes the
    state database's tables itself."""

    POLL = 0.05

    def __init__(self, cron: Cron) -> None:
        self.cron = cron
        self.store: Store | None = None
        self.read_at = 0.0
        self.pid: int | None = None

    def driver_pid(self) -> int | None:
        if time.monotonic() - self.read_at < self.POLL:
            return self.pid
        self.read_at = time.monotonic()
        if self.store is None:
            if not self.cron.sandbox.counts()["requests"].get("chat"):
                return None
            self.store = Store(self.cron.db_url)
        newest = next(iter(self.store.runs()), None)
        lease = None if newest is None else newest.lease
        self.pid = None if lease is None else lease.owner.pid
        return self.pid

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def takeovers(db_url: str) -> int:
    """How often a run's lease was taken from an owner that had died holding it."""
    store = Store(db_url)
    try:
        return sum("taken_from" in event.data for run in store.runs()
                   for event in store.events(run.id) if event.kind == "lease_acquired")
    finally:
        store.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_ticks_killed_at_random_launch_exactly_one_cycle_per_interval(
        make_cron: Callable[..., Cron], spawn: Callable[..., Proc], seed: int,
        record_property: Callable[[str, object], None]) -> None:
    """Cron starts a tick every SLOT seconds, whether the last one has ended or not; about half
    of the ticks are SIGKILLed, should they drive a run, at a random point of the cycle."""
    cron = make_cron(latency=TICK_LATENCY)
    # One item at a time keeps a cycle long enough for the random kills to land mid-run; item
    # concurrency under kills is the crash tests' subject.
    cron.cli.env["CFTRUNNER_CONCURRENCY"] = "1"
    rand = random.Random(seed)
    began = time.monotonic()
    procs: list[Proc] = []
    kill_after: dict[int, int] = {}  # requests once driving, by pid of the ticks to be killed
    kill_at: dict[int, int] = {}  # requests sent, by pid of those that began driving
    leases = Leases(cron)

    def kill_those_due() -> None:
        sent = requests_sent(cron.sandbox)
        if any(p.pid in kill_after and p.pid not in kill_at and not p.done() for p in procs):
            driver = leases.driver_pid()
            if driver in kill_after and driver not in kill_at:
                kill_at[driver] = sent + kill_after[driver]
        for proc in procs:
            if proc.pid in kill_at and not proc.done() and sent >= kill_at[proc.pid]:
                proc.kill()

    for number in range(MAX_TICKS):
        if number >= TICKS and len(cron.runs()) >= 2 and takeovers(cron.db_url) >= 1:
            break
        while (time.monotonic() < began + number * SLOT
               or sum(not proc.done() for proc in procs) >= MAX_ALIVE):
            kill_those_due()
            time.sleep(0.005)
        procs.append(spawn(cron.cli, *cron.args))
        if rand.random() < KILL_SHARE:
            kill_after[procs[-1].pid] = rand.randint(*KILL_AFTER_REQUESTS)
    while not all([proc.done() for proc in procs]):
        kill_those_due()
        time.sleep(0.005)
    leases.close()
    finishing = None
    if cron.runs()[0]["state"] != "LAUNCHED":  # its driver was killed last: cron's next tick
        finishing = cron.tick()
        assert finishing.returncode == 0, finishing.stderr

    exits = [proc.returncode for proc in procs]
    taken = takeovers(cron.db_url)
    record_property("exits", exits)
    print(f"\nseed {seed}: exits {exits}{', then one more tick' if finishing else ''}; "
          f"{taken} takeovers from a killed owner")
    assert set(exits) <= {0, BUSY, KILLED}, "\n".join(p.describe() for p in procs)
    assert taken >= 1, "no kill landed while a run was being driven"
    for proc in procs:
        assert "database is locked" not in proc.stderr
        if proc.returncode == BUSY:
            assert busy_with(proc.stderr).host == HOST
    runs = cron.runs()  # newest first
    assert len(runs) >= 2
    assert {run["state"] for run in runs} == {"LAUNCHED"}
    for newer, older in itertools.pairwise(runs):
        assert when(newer["created_at"]) - when(older["created_at"]) >= timedelta(seconds=INTERVAL)
    assert_cycles_launched_once(cron.sandbox, len(runs))
    assert sorted(job["id"] for job in cron.sandbox.world.jobs()) == sorted(
        run["job_id"] for run in runs)


# -- one tick at a time ------------------------------------------------------------------------


def test_tick_with_nothing_due_says_so_exits_0_and_sends_nothing(
        make_cron: Callable[..., Cron]) -> None:
    # An hour, so that no start-up of the second tick, however slow, can reach the next cycle.
    cron = make_cron({"interval": '"1h"'})
    first = cron.tick()
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.splitlines()[0]
    sent = requests_sent(cron.sandbox)

    again = cron.tick()

    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"nothing to do: the last cycle {run_id} LAUNCHED ")
    assert "next in" in again.stdout
    assert requests_sent(cron.sandbox) == sent
    assert len(cron.runs()) == 1


def test_tick_resumes_the_cycle_s_unfinished_run(make_cron: Callable[..., Cron]) -> None:
    cron = make_cron()
    killed = cron.tick(env={crashpoints.ENV: "trace.after_intent:2"})
    assert killed.returncode == KILLED, killed.stderr
    run_id = killed.stdout.splitlines()[0]

    resumed = cron.tick()

    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines() == [launched_line(run_id) + cron.runs()[0]["job_id"]]
    [run] = cron.runs()
    assert (run["run_id"], run["state"]) == (run_id, "LAUNCHED")
    assert_cycles_launched_once(cron.sandbox, 1)


def test_tick_while_another_process_drives_the_cycle_exits_75(
        make_cron: Callable[..., Cron], spawn: Callable[..., Proc]) -> None:
    cron = make_cron()
    # The driver's first trace is held until the other tick has ended, however slowly it starts.
    cron.sandbox.add_fault(FaultRule(route="trace_create", kind="hold", times=1))
    driver = spawn(cron.cli, *cron.args, env={"CFTRUNNER_READ_TIMEOUT": "120"})
    wait_until(lambda: received("trace_create")(cron.sandbox.counts()), "tracing", alive=driver)

    refused = cron.tick()
    cron.sandbox.release_holds()

    assert refused.returncode == BUSY, refused.stderr
    busy = busy_with(refused.stderr)
    assert (busy.host, busy.pid) == (HOST, driver.pid)
    assert busy.until > utcnow()
    assert refused.stdout == ""
    driver.wait()
    assert driver.returncode == 0, driver.describe()
    [run] = cron.runs()
    assert run["state"] == "LAUNCHED" and busy.run_id == run["run_id"]
    assert_cycles_launched_once(cron.sandbox, 1)


def test_after_a_failed_cycle_tick_waits_the_failed_retry_interval(
        make_cron: Callable[..., Cron]) -> None:
    cron = make_cron({"failed_retry_interval": '"1h"', "interval": '"1d"'})
    cron.sandbox.add_fault(FaultRule(route="chat", status=400, judge=False))
    failed = cron.tick()
    assert failed.returncode == 1, failed.stderr
    assert "every item failed" in one_error_line(failed.stderr)
    cron.sandbox.clear_faults()
    sent = requests_sent(cron.sandbox)

    waiting = cron.tick()

    [run] = cron.runs()
    assert waiting.returncode == 0, waiting.stderr
    assert waiting.stdout.startswith(f"nothing to do: the last cycle {run['run_id']} FAILED ")
    assert "next try in 59m" in waiting.stdout
    assert requests_sent(cron.sandbox) == sent
    # The operator shortens the wait in the config file, which each tick reads afresh; once it
    # has passed, the next tick tries again (a short interval from the start would have raced
    # the second tick's start-up on a busy host).
    text = cron.config.read_text()
    cron.config.write_text(text.replace('failed_retry_interval = "1h"',
                                        'failed_retry_interval = "1s"'))
    due = when(run["state_changed_at"]) + timedelta(seconds=1)
    time.sleep(max(0.0, (due - utcnow()).total_seconds()) + 0.1)

    retried = cron.tick()

    assert retried.returncode == 0, retried.stderr
    new, old = cron.runs()
    assert (new["state"], old["state"], old["run_id"]) == ("LAUNCHED", "FAILED", run["run_id"])
    assert retried.stdout.splitlines()[0] == new["run_id"]
    assert_cycles_launched_once(cron.sandbox, 1)


@pytest.mark.parametrize(("keys", "tail", "named"), [
    pytest.param({"interval": '"soon"'}, "", "interval", id="interval-not-a-duration"),
    pytest.param({"interval": "0"}, "", "interval", id="interval-zero"),
    pytest.param({"failed_retry_interval": '"-1h"'}, "", "failed_retry_interval",
                 id="negative-failed-retry-interval"),
    pytest.param({"intervall": '"4s"'}, "", "intervall", id="unknown-key"),
    pytest.param({}, '[timeouts]\nlease = "long"\n', "timeouts.lease", id="lease-not-a-number"),
])
def test_a_bad_config_is_exit_2_with_one_line_naming_the_key(
        make_cron: Callable[..., Cron], keys: dict[str, str], tail: str, named: str) -> None:
    cron = make_cron(keys, tail)

    refused = cron.tick()

    assert refused.returncode == 2
    line = one_error_line(refused.stderr)
    assert f"{cron.config}: {named}" in line or f"unknown key {named}" in line, line
    assert refused.stdout == ""
    assert requests_sent(cron.sandbox) == 0
    assert not state_stored(cron.db_url)
