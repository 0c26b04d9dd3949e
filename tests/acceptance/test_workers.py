"""Several worker processes on one run (`cftrunner resume RUN_ID --worker`), on the suite's
database (PostgreSQL when the suite runs on it): random SIGKILLs, a worker killed mid-item, and
every remote effect still exactly once."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from cftrunner import crashpoints
from cftrunner.config.run_options import LoopConfig
from cftrunner.driver import Driver
from cftrunner.ownership import HOST_ENV
from cftrunner.records import RunSpec
from cftrunner.sandbox import DEFAULT_PROJECT_ID, Sandbox
from cftrunner.states import RunState
from cftrunner.store import Store
from cftrunner.store.schema import events, items, workers
from tests.acceptance import test_ownership as ownership
from tests.acceptance.test_ownership import Proc, wait_all
from tests.conftest import JUDGE, MODEL, Cli, assert_exactly_once, quick_settings

pytestmark = pytest.mark.slow
spawn = ownership.spawn  # the same fixture: processes, killed at the end if still running

RUN_ID = "shared-run"
LEASE_ENV = "CFTRUNNER_LEASE_SECONDS"
UNFINISHED = ("PENDING", "GENERATED", "JUDGED", "TRACED")


def prompts(n: int) -> list[str]:
    return [f"Shared prompt {i}: is 'how do I fix my bike chain?' safe?" for i in range(n)]


def create_run(sandbox: Sandbox, db_url: str, n: int, loop: LoopConfig | None = None) -> None:
    """The run, stored with its items and no owner, as a `start` killed at once would leave it."""
    store = Store(db_url)
    runner = Driver(store, quick_settings(sandbox.url, db_url))
    try:
        runner.create(RunSpec(project_id=DEFAULT_PROJECT_ID, model_alias=MODEL,
                              prompts_source="test", judge_model=JUDGE, run_id=RUN_ID,
                              loop=loop or LoopConfig()),
                      prompts(n))
        runner.ownership.release()
    finally:
        runner.client.close()
        store.close()


class Shared:
    """The run's database, read the way an operator would while workers come and go."""

    def __init__(self, db_url: str) -> None:
        self.store = Store(db_url)

    def state(self) -> RunState:
        return self.store.run(RUN_ID).state

    def unfinished(self) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(items).where(
                items.c.run_id == RUN_ID, items.c.stage.in_(UNFINISHED))).scalar() or 0)

    def held_by(self, host: str) -> tuple[int, datetime]:
        """Unfinished items the worker on `host` holds, and when its registration expires."""
        with self.store.engine.connect() as conn:
            token, expires = conn.execute(sa.select(workers.c.token, workers.c.expires_at)
                                          .where(workers.c.host == host)).one()
            held = conn.execute(sa.select(sa.func.count()).select_from(items).where(
                items.c.claim_token == token, items.c.stage.in_(UNFINISHED))).scalar()
        return int(held or 0), expires

    def joined_hosts(self) -> set[str]:
        """The hosts of the workers registered now."""
        with self.store.engine.connect() as conn:
            return set(conn.execute(sa.select(workers.c.host)).scalars())

    def events(self, kind: str) -> list[tuple[datetime, dict[str, object]]]:
        return [(e.at, e.data) for e in self.store.events(RUN_ID) if e.kind == kind]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def shared(db_url: str) -> Shared:
    return Shared(db_url)


def worker(cli: Cli, spawn: Callable[..., Proc], host: str, lease: float = 3,
           env: dict[str, str] | None = None) -> Proc:
    return spawn(cli, "resume", RUN_ID, "--worker",
                 env={HOST_ENV: host, LEASE_ENV: str(lease), **(env or {})})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_three_workers_killed_at_random_still_do_every_effect_once(
        seed: int, make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path,
        spawn: Callable[..., Proc], shared: Shared) -> None:
    n = 60
    sandbox = make_sandbox(latency=0.05)
    cli = Cli(sandbox, db_url, tmp_path)
    create_run(sandbox, db_url, n)
    rng = random.Random(seed)
    hosts = (f"host-{k}" for k in itertools.count())
    hosts_of: dict[int, str] = {}

    def another() -> Proc:
        host = next(hosts)
        # Two items at a time each: the run lasts a few seconds, long enough for four kills.
        proc = worker(cli, spawn, host, env={"CFTRUNNER_CONCURRENCY": "2"})
        hosts_of[proc.pid] = host
        return proc

    live = [another() for _ in range(3)]
    ended: list[Proc] = []
    kills: list[tuple[str, int]] = []  # (run state, unfinished items) at each kill
    victims: list[str] = []
    deadline = time.monotonic() + 150
    while not shared.store.run(RUN_ID).finished:
        assert time.monotonic() < deadline, [p.describe() for p in live]
        time.sleep(rng.uniform(0.2, 1.0))
        ended += [p for p in live if p.done()]
        live = [p for p in live if not p.done()]
        # A worker still starting up has not joined yet: kill only those at work.
        joined = shared.joined_hosts()
        working = [p for p in live if hosts_of[p.pid] in joined]
        if len(kills) < 4 and working:
            victim = rng.choice(working)
            kills.append((shared.state().value, shared.unfinished()))
            victims.append(f"{hosts_of[victim.pid]} pid {victim.pid}")
            victim.kill()
            live.remove(victim)
        while len(live) < 3:
            live.append(another())
    wait_all(live)
    print(f"\nseed {seed}: {len(kills)} kills at (run state, unfinished items) {kills}")
    for proc in ended + live:
        assert proc.returncode == 0, proc.describe()
    assert shared.state() is RunState.LAUNCHED
    assert_exactly_once(sandbox, n)
    assert len(kills) >= 3, kills
    assert any(unfinished for _, unfinished in kills), kills  # some kills landed mid-items
    joined = {str(data["worker"]) for _, data in shared.events("worker_joined")}
    assert set(victims) <= joined  # each was killed at work, not while starting up
    shared.close()


def test_a_worker_killed_mid_item_leaves_its_items_to_the_others_once_its_claims_expire(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path,
        spawn: Callable[..., Proc], shared: Shared) -> None:
    n = 12
    sandbox = make_sandbox(latency=0.02)
    cli = Cli(sandbox, db_url, tmp_path)
    create_run(sandbox, db_url, n)
    # Killed after its third trace was sent and before the answer was stored.
    first = worker(cli, spawn, "host-a", env={crashpoints.ENV: "trace.after_send:3"}).wait()
    assert first.returncode == -9, first.describe()
    held, expires = shared.held_by("host-a")
    assert held > 0
    others = [worker(cli, spawn, "host-b"), worker(cli, spawn, "host-c")]
    wait_all(others)
    for proc in others:
        assert proc.returncode == 0, proc.describe()
    assert shared.state() is RunState.LAUNCHED
    assert_exactly_once(sandbox, n)  # the trace sent by the dead worker was found, not resent
    lapsed = shared.events("worker_lapsed")
    assert [data["worker"] for _, data in lapsed] == [f"host-a pid {first.pid}"]
    assert lapsed[0][0] >= expires  # not before its claims expired: host-a could be alive
    taken = shared.events("claims_taken_over")
    assert sum(int(str(data["items"])) for _, data in taken) == held
    shared.close()


def test_a_worker_killed_on_this_host_is_taken_over_without_waiting_for_expiry(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path,
        spawn: Callable[..., Proc], shared: Shared) -> None:
    sandbox = make_sandbox(latency=0.02)
    cli = Cli(sandbox, db_url, tmp_path)
    create_run(sandbox, db_url, 8)
    first = worker(cli, spawn, "this-host", lease=60,
                   env={crashpoints.ENV: "judge.after_answer:2"}).wait()
    assert first.returncode == -9, first.describe()
    held, expires = shared.held_by("this-host")
    assert held > 0
    second = worker(cli, spawn, "this-host", lease=60).wait()
    assert second.returncode == 0, second.describe()
    assert shared.state() is RunState.LAUNCHED
    assert_exactly_once(sandbox, 8)
    (at, data), = shared.events("worker_lapsed")
    assert data["worker"] == f"this-host pid {first.pid}"
    assert at < expires  # proven dead by its pid's start time, not waited out
    shared.close()


def test_workers_share_the_items_and_one_of_them_does_the_run_level_steps(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path,
        spawn: Callable[..., Proc], shared: Shared) -> None:
    n = 30
    sandbox = make_sandbox(latency=0.05)
    cli = Cli(sandbox, db_url, tmp_path)
    create_run(sandbox, db_url, n)
    procs = [worker(cli, spawn, f"host-{k}", env={"CFTRUNNER_CONCURRENCY": "2"})
             for k in range(3)]
    wait_all(procs)
    assert [p.returncode for p in procs] == [0, 0, 0], [p.describe() for p in procs]
    assert shared.state() is RunState.LAUNCHED
    assert_exactly_once(sandbox, n)
    with shared.store.engine.connect() as conn:
        tokens = conn.execute(sa.select(items.c.claim_token, sa.func.count())
                              .where(items.c.run_id == RUN_ID)
                              .group_by(items.c.claim_token)).all()
        leases = conn.execute(sa.select(sa.func.count()).select_from(events).where(
            events.c.kind == "lease_acquired")).scalar()
    assert len(tokens) == 3 and all(count >= 3 for _, count in tokens), tokens
    launched = [p for p in procs if "LAUNCHED" in p.stdout]
    assert len(launched) == 1, [p.stdout for p in procs]
    assert leases is not None and leases >= 1
    shared.close()


def test_cancel_stops_a_worker_and_the_run_ends_cancelled_with_no_snapshot(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path,
        spawn: Callable[..., Proc], shared: Shared) -> None:
    n = 40
    sandbox = make_sandbox(latency=0.05)
    cli = Cli(sandbox, db_url, tmp_path)
    create_run(sandbox, db_url, n)
    proc = worker(cli, spawn, "host-a", env={"CFTRUNNER_CONCURRENCY": "2"})
    deadline = time.monotonic() + 60
    while shared.unfinished() == n:  # at work: some item done
        assert time.monotonic() < deadline and not proc.done(), proc.describe()
        time.sleep(0.05)
    cancelled = cli.run("cancel", RUN_ID)
    assert cancelled.returncode == 0, cancelled.stderr
    proc.wait()
    assert proc.returncode == 4, proc.describe()  # the exit status of a cancelled run
    assert shared.state() is RunState.CANCELLED
    assert 0 < shared.unfinished() < n
    counts = sandbox.counts()
    assert counts["snapshots"] == 0 and counts["jobs"] == 0
    shared.close()


def test_workers_on_a_run_that_follows_its_job_and_promotes_evaluate_each_answer_once(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path,
        spawn: Callable[..., Proc], shared: Shared) -> None:
    """`resume --worker`, as cron would start it on three hosts, round after round: the items
    are shared, and after the launch one process at a time follows the job and evaluates the
    held-out prompts, each answer asked for once, the model promoted once."""
    n, holdout = 12, tuple(f"Held-out message {i}: 'where is the spare key?'" for i in range(6))
    sandbox = make_sandbox(latency=0.02, training_polls=1, training_gain=0.2)
    cli = Cli(sandbox, db_url, tmp_path)
    create_run(sandbox, db_url, n, LoopConfig(follow=True, promote=True, holdout=holdout))
    rounds = 0
    while shared.state() is not RunState.PROMOTED:
        rounds += 1
        assert rounds <= 6, shared.state()
        procs = [worker(cli, spawn, f"host-{k}", env={"CFTRUNNER_CONCURRENCY": "2"})
                 for k in range(3)]
        wait_all(procs)
        assert [p.returncode for p in procs] == [0, 0, 0], [p.describe() for p in procs]

    assert rounds >= 2  # the job was still training after the first round
    assert_exactly_once(sandbox, n)
    run = shared.store.run(RUN_ID)
    assert run.promotion is not None and run.promotion["promoted"] is True
    models = 1 + len(run.promotion["candidates"])
    kept = [(e["model_id"], e["position"]) for e in shared.store.evaluations(RUN_ID)]
    assert sorted(kept) == sorted({(m, p) for m, p in kept}) and len(kept) == models * len(holdout)
    # Each item's answer and judgment, then each held-out answer and its judgment: none twice.
    assert sandbox.counts()["requests"]["chat"] == 2 * n + 2 * models * len(holdout)
    shared.close()
