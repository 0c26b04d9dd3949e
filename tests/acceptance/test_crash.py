"""Whole `cftrunner` processes killed with SIGKILL or cut off from their answers: every effect once."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cftrunner import crashpoints
from cftrunner.exceptions import RunNotFoundError
from cftrunner.records import EffectStatus
from cftrunner.sandbox import DEFAULT_API_KEY, FaultRule, Sandbox
from cftrunner.states import ItemStage
from cftrunner.store import Store
from tests.conftest import (
    PROMPTS,
    Cli,
    assert_exactly_once,
    databases,
    requests_sent,
    shown_status,
)

pytestmark = pytest.mark.slow

RUN_ID = "crash-run"
KILLED = -signal.SIGKILL
EFFECT_ROUTES = ("trace_create", "add_to_dataset", "snapshot_create", "recs_generate",
                 "finetune_create")
PER_ITEM_KINDS = ("generate", "judge", "trace", "add")
MIDDLE_ITEM_HIT = 3  # of the six items, so that items before and after the crash exist
READ_TIMEOUT = 2.0  # what the Cli gives the client
# Longer than the read timeout: the client has given up before the answer (or the action) comes.
LATE_DELAY = 3.0
RANDOM_KILL_LATENCY = 0.02
# A random kill lands during a process's start-up this often, at a random moment; otherwise at
# a random point of the run's progress: after so many more requests reach the sandbox, fewer than
# a whole run sends, so that the first process is always killed, however fast this host is.
STARTUP_KILLS = 0.25
MAX_LIVES = 15  # processes one random-kill case starts at most; the last is not killed


@dataclass(frozen=True)
class Ended:
    returncode: int
    stdout: str
    stderr: str


def run_until(cli: Cli, args: list[str] | tuple[str, ...], kill_when: Callable[[], bool],
              env: dict[str, str] | None = None, bound: float = 60.0) -> Ended:
    """Run a command, SIGKILL it as soon as `kill_when` holds, and return how it ended."""
    proc = cli.spawn(*args, env=env)
    deadline = time.monotonic() + bound
    while True:
        try:
            # Reading while waiting keeps the child from blocking on a full stderr pipe.
            out, err = proc.communicate(timeout=0.01)
            return Ended(proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            if kill_when() or time.monotonic() > deadline:
                break
    proc.kill()
    out, err = proc.communicate()
    return Ended(proc.returncode, out, err)


def after(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


def once_then_after(condition: Callable[[], bool], seconds: float) -> Callable[[], bool]:
    """True `seconds` after `condition` first held."""
    seen: list[float] = []

    def check() -> bool:
        if not seen and condition():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= seconds
    return check


def tail(text: str, chars: int = 3000) -> str:
    return text[-chars:]


def status(cli: Cli, run_id: str = RUN_ID) -> dict[str, Any]:
    """What `status --json RUN_ID` shows, read without a process of its own."""
    shown: dict[str, Any] = shown_status(cli.env["CFTRUNNER_DB"], run_id)
    return shown


def stored_state(db_url: str, run_id: str = RUN_ID) -> str | None:
    """The run's state in the state database, or None when the run was never stored."""
    store = Store(db_url)
    try:
        return store.run(run_id).state.value
    except RunNotFoundError:
        return None
    finally:
        store.close()


def stored_progress(db_url: str, run_id: str = RUN_ID) -> str:
    """The run's items counted by stage, as a failure message shows them ("-" before the run
    is stored)."""
    store = Store(db_url)
    try:
        _, stages = store.stage_counts(run_id)
    except RunNotFoundError:
        return "-"
    finally:
        store.close()
    return " ".join(f"{stage.lower()}:{n}" for stage, n in sorted(stages.items())) or "-"


def last_events(stderr: str, n: int = 3) -> list[str]:
    """The names of the last JSON log events a process wrote, for a failure message."""
    return [str(event.get("event")) for event in log_events(stderr)[-n:]]


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log events a process wrote to stderr."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def resume_to_launched(cli: Cli, run_id: str = RUN_ID, env: dict[str, str] | None = None) -> Ended:
    result = cli.run("resume", run_id, env=env)
    assert result.returncode == 0, tail(result.stderr)
    return Ended(result.returncode, result.stdout, result.stderr)


def assert_launched_once(cli: Cli, sandbox: Sandbox, run_id: str = RUN_ID) -> dict[str, Any]:
    """The run is LAUNCHED with the one job the sandbox made, and every effect happened once."""
    shown = status(cli, run_id)
    assert shown["state"] == "LAUNCHED", shown
    assert shown["job_id"] is not None
    assert_exactly_once(sandbox, len(PROMPTS))
    assert [job["id"] for job in sandbox.world.jobs()] == [shown["job_id"]]
    assert [snap["id"] for snap in sandbox.world.snapshots()] == [shown["snapshot_id"]]
    return shown


def crash_spec(point: str) -> str:
    """The point, at its third hit when it is passed once per item."""
    kind = point.split(".")[0]
    return f"{point}:{MIDDLE_ITEM_HIT}" if kind in PER_ITEM_KINDS else point


# -- 1. every named crash point ------------------------------------------------------------


@pytest.mark.parametrize("point", crashpoints.POINTS, ids=crashpoints.POINTS)
def test_a_kill_at_any_crash_point_resumes_to_launched_with_every_effect_once(
        cli: Cli, sandbox: Sandbox, point: str) -> None:
    killed = cli.run(*cli.start_args(RUN_ID), env={crashpoints.ENV: crash_spec(point)})
    assert killed.returncode == KILLED, tail(killed.stderr)
    assert killed.stdout.splitlines()[0] == RUN_ID

    resume_to_launched(cli)

    assert_launched_once(cli, sandbox)


def effects_at_kill(db_url: str) -> dict[str, list[str]]:
    """The keys of the run's trace and addition effects by status, as the kill left them."""
    store = Store(db_url)
    try:
        found: dict[str, list[str]] = {}
        for effect in store.effects(RUN_ID):
            if effect.kind in ("trace", "add"):
                found.setdefault(effect.status.value, []).append(effect.key)
        return found
    finally:
        store.close()


@pytest.mark.sqlite_only  # PostgreSQL groups commits in the server: writes have no batches here
@pytest.mark.parametrize("point", crashpoints.BATCH_POINTS, ids=crashpoints.BATCH_POINTS)
def test_a_kill_inside_a_batch_of_shared_commits_resumes_with_every_effect_once(
        cli: Cli, sandbox: Sandbox, db_url: str, point: str) -> None:
    """With a commit window, the items' intents and outcomes share commits (store/batches.py).
    Killed inside such a batch (its intents committed and none sent; some sent; its outcomes
    committed), a resume sends each effect once."""
    env = {crashpoints.ENV: point, "CFTRUNNER_COMMIT_WINDOW": "0.3"}
    killed = cli.run(*cli.start_args(RUN_ID), env=env)
    assert killed.returncode == KILLED, tail(killed.stderr)
    left = effects_at_kill(db_url)
    traces = sandbox.counts()["requests"].get("trace_create", 0)
    if point == "batch.after_intents":
        assert traces == 0 and len(left.get("PREPARED", [])) >= 2, left
    elif point == "batch.after_some_sent":
        assert traces >= 1 and left.get("PREPARED"), left
    else:
        assert len(left.get("DONE", [])) >= 2, left

    resume_to_launched(cli)

    assert_launched_once(cli, sandbox)


@pytest.mark.parametrize(("point", "stage", "kind"), [
    ("judge.after_store", ItemStage.JUDGED, "trace"),
    ("trace.after_outcome", ItemStage.TRACED, "add"),
])
def test_a_step_stores_its_outcome_with_the_intent_of_the_next_effect(
        cli: Cli, sandbox: Sandbox, db_url: str, point: str, stage: ItemStage, kind: str) -> None:
    """Killed right after one such transaction: no item is at `stage` without its intent, and
    the intent (never sent) is found not to have happened, then sent once."""
    killed = cli.run(*cli.start_args(RUN_ID), env={crashpoints.ENV: f"{point}:1"})
    assert killed.returncode == KILLED, tail(killed.stderr)

    store = Store(db_url)
    try:
        at_stage = store.items(RUN_ID, stage)
        intents = {i.position: store.effect(RUN_ID, f"{kind}:{i.position}") for i in at_stage}
    finally:
        store.close()
    assert at_stage
    assert all(e is not None and e.status is EffectStatus.PREPARED and e.attempts == 1
               for e in intents.values()), intents

    resume_to_launched(cli)
    assert_launched_once(cli, sandbox)


# -- 2. kills at random times ---------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """An unkilled run on this host: process start-up is a large and variable share of a short
    run (more on PostgreSQL, more on a busy host), so kills are placed by measure, not assumption."""

    startup: float  # seconds a `resume` that finds the run LAUNCHED takes: start-up and exit
    requests: int  # requests one unkilled `start` sends

    def kill_when(self, rand: random.Random, sandbox: Sandbox) -> Callable[[], bool]:
        if rand.random() < STARTUP_KILLS:
            # Start-up was measured once, perhaps while the host was busier than now: should the
            # process outrun that time, it is still killed, before its last request.
            timed = after(rand.uniform(0.05, self.startup))
            late = after_requests(sandbox, self.requests - 1)
            return lambda: timed() or late()
        return after_requests(sandbox, rand.randint(1, self.requests - 1))


def after_requests(sandbox: Sandbox, more: int) -> Callable[[], bool]:
    enough = requests_sent(sandbox) + more
    return lambda: requests_sent(sandbox) >= enough


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Measured:
    """An unkilled `start` at the random cases' latency, then a `resume` of what it launched."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    db_url = databases().new(tmp)
    with Sandbox(api_key=DEFAULT_API_KEY, latency=RANDOM_KILL_LATENCY,
                 processing_seconds=0.2) as sandbox:
        cli = Cli(sandbox, db_url, tmp)
        result = cli.run(*cli.start_args(RUN_ID))
        assert result.returncode == 0, tail(result.stderr)
        requests = requests_sent(sandbox)
        began = time.monotonic()
        shown = cli.run("resume", RUN_ID)
        startup = time.monotonic() - began
        assert shown.returncode == 0, tail(shown.stderr)
    databases().drop(db_url)
    return Measured(startup, requests)


@pytest.mark.parametrize("seed", range(6))
def test_random_kills_of_start_and_resume_end_launched_with_every_effect_once(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path, seed: int,
        measured: Measured, record_property: Callable[[str, object], None]) -> None:
    """Each process, `start` or then `resume`, is killed after a random delay until one finishes
    (the last one that may be started is not killed)."""
    sandbox = make_sandbox(latency=RANDOM_KILL_LATENCY)
    cli = Cli(sandbox, db_url, tmp_path)
    rand = random.Random(seed)
    killed_in: list[str | None] = []
    lives: list[str] = []  # what each killed process left, for the failure message
    for life in range(MAX_LIVES):
        state = stored_state(db_url)
        args = cli.start_args(RUN_ID) if state is None else ["resume", RUN_ID]
        began, sent = time.monotonic(), requests_sent(sandbox)
        # The last process is left alone: it must finish what the killed ones left, however
        # little each of them got done on a busy host.
        last = life == MAX_LIVES - 1
        ended = run_until(cli, args, (lambda: False) if last else measured.kill_when(rand, sandbox))
        if ended.returncode == 0:
            break
        if last:
            pytest.fail(f"the process left alone after {len(lives)} kills ({measured}) ended "
                        f"{ended.returncode}: {tail(ended.stderr)}\nthe killed ones:\n"
                        + "\n".join(lives))
        assert ended.returncode == KILLED, tail(ended.stderr)
        killed_in.append(stored_state(db_url))
        lives.append(f"{killed_in[-1]} after {time.monotonic() - began:.2f} s and "
                     f"{requests_sent(sandbox) - sent} requests, items {stored_progress(db_url)}, "
                     f"last events {last_events(ended.stderr)}")

    record_property("kills", len(killed_in))
    print(f"\nseed {seed}: {len(killed_in)} kills ({measured}), in states {killed_in}")
    assert killed_in
    assert_launched_once(cli, sandbox)


# -- 3. lost answers -----------------------------------------------------------------------

LOST_ANSWERS = [
    *(pytest.param(FaultRule(route=route, kind="drop", times=1), id=f"drop-{route}")
      for route in EFFECT_ROUTES),
    *(pytest.param(FaultRule(route=route, kind="late", delay=LATE_DELAY, times=1),
                   id=f"late-{route}") for route in EFFECT_ROUTES),
    *(pytest.param(FaultRule(route=route, kind="status", status=503, after_action=True, times=1),
                   id=f"503-after-action-{route}") for route in EFFECT_ROUTES),
]


@pytest.mark.parametrize("rule", LOST_ANSWERS)
def test_a_lost_answer_to_an_effect_is_reconciled_within_one_start(
        cli: Cli, sandbox: Sandbox, rule: FaultRule) -> None:
    sandbox.add_fault(rule)

    result = cli.run(*cli.start_args(RUN_ID))

    assert result.returncode == 0, tail(result.stderr)
    assert sandbox.counts()["faults_fired"] == {rule.kind: 1}
    assert {"event": "reconciled", "verdict": "happened"}.items() <= next(
        e for e in log_events(result.stderr) if e["event"] == "reconciled").items()
    assert_launched_once(cli, sandbox)


# -- 4. lost answers and kills together ------------------------------------------------------

LOST_AND_KILLED = [
    pytest.param([FaultRule(route="trace_create", kind="drop", every=2)], "trace.after_intent:2",
                 id="drop-every-2nd-trace+kill-after-2nd-trace-intent"),
    pytest.param([FaultRule(route="trace_create", kind="drop", every=2)], "trace.after_send:2",
                 id="drop-every-2nd-trace+kill-after-2nd-trace-answer"),
    pytest.param([FaultRule(route="add_to_dataset", kind="drop", every=2)], "add.after_send:2",
                 id="drop-every-2nd-addition+kill-after-2nd-addition-answer"),
    pytest.param([FaultRule(route="snapshot_create", kind="status", status=503,
                            after_action=True, times=1)], "recs.before_intent",
                 id="503-after-snapshot+kill-before-recs-intent"),
    pytest.param([FaultRule(route="recs_generate", kind="late", delay=LATE_DELAY, times=1)],
                 "recs.after_ready", id="late-recs+kill-after-recs-ready"),
    pytest.param([FaultRule(route="finetune_create", kind="drop", times=1)],
                 "launch.after_intent", id="drop-launch+kill-after-launch-intent"),
]


@pytest.mark.parametrize(("rules", "crash_at"), LOST_AND_KILLED)
def test_lost_answers_and_a_kill_together_still_give_every_effect_once(
        cli: Cli, sandbox: Sandbox, rules: list[FaultRule], crash_at: str) -> None:
    for rule in rules:
        sandbox.add_fault(rule)

    killed = cli.run(*cli.start_args(RUN_ID), env={crashpoints.ENV: crash_at})
    assert killed.returncode == KILLED, tail(killed.stderr)
    resume_to_launched(cli)

    assert sum(sandbox.counts()["faults_fired"].values()) >= 1
    assert_launched_once(cli, sandbox)


ACTED_ON: dict[str, Callable[[dict[str, Any]], bool]] = {
    "trace_create": lambda counts: counts["traces"] >= 1,
    "add_to_dataset": lambda counts: counts["datapoints"] >= 1,
    "snapshot_create": lambda counts: counts["snapshots"] == 1,
    "recs_generate": lambda counts: bool(counts["recommendations_generated"]),
    "finetune_create": lambda counts: counts["jobs"] == 1,
}


@pytest.mark.parametrize("route", EFFECT_ROUTES)
def test_a_kill_while_the_answer_to_an_effect_is_outstanding_is_reconciled_on_resume(
        cli: Cli, sandbox: Sandbox, route: str) -> None:
    """The sandbox has acted and holds the answer back; the waiting process is killed."""
    sandbox.add_fault(FaultRule(route=route, kind="late", delay=LATE_DELAY, times=1))

    killed = run_until(cli, cli.start_args(RUN_ID),
                       kill_when=lambda: ACTED_ON[route](sandbox.counts()))
    assert killed.returncode == KILLED, tail(killed.stderr)
    resume_to_launched(cli)

    assert_launched_once(cli, sandbox)


# -- 5. storms of refusals -----------------------------------------------------------------


@pytest.mark.parametrize("rule", [
    # About 70 s: each push-back halves the run's rate, down to its floor of half a request a
    # second, and a 30% storm keeps it there.
    pytest.param(FaultRule(kind="status", status=429, retry_after=0.1, probability=0.3), id="429",
                 marks=pytest.mark.long),
    pytest.param(FaultRule(kind="status", status=503, probability=0.3), id="503"),
])
def test_a_storm_of_refusals_on_every_route_still_launches_with_every_effect_once(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path,
        rule: FaultRule) -> None:
    """With more attempts allowed than a 30% storm can exhaust, one `start` is enough."""
    sandbox = make_sandbox(seed=7)
    sandbox.add_fault(rule)
    cli = Cli(sandbox, db_url, tmp_path)

    result = cli.run(*cli.start_args(RUN_ID), env={"CFTRUNNER_MAX_ATTEMPTS": "12"})

    assert result.returncode == 0, tail(result.stderr)
    assert sandbox.counts()["faults_fired"]["status"] >= 5
    shown = assert_launched_once(cli, sandbox)
    assert shown["items"]["ADDED"] == len(PROMPTS)
    assert shown["failures"] == {}


# -- 6. kills while waiting on the platform ------------------------------------------------


def test_a_kill_while_waiting_for_corrections_resumes_with_every_effect_once(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path) -> None:
    sandbox = make_sandbox(processing_seconds=1.0, recs_polls=5)
    cli = Cli(sandbox, db_url, tmp_path)
    all_added = lambda: sandbox.counts()["datapoints"] == len(PROMPTS)  # noqa: E731

    killed = run_until(cli, cli.start_args(RUN_ID), kill_when=once_then_after(all_added, 0.3))
    assert killed.returncode == KILLED, tail(killed.stderr)
    assert status(cli)["state"] == "ADDED"
    assert sandbox.counts()["snapshots"] == 0
    resume_to_launched(cli)

    assert_launched_once(cli, sandbox)


def test_a_kill_while_polling_recommendations_resumes_with_every_effect_once(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path) -> None:
    sandbox = make_sandbox(processing_seconds=1.0, recs_polls=5)
    cli = Cli(sandbox, db_url, tmp_path)
    cli.env["CFTRUNNER_POLL_INTERVAL"] = "0.2"  # five polls then last about a second
    generated = lambda: bool(sandbox.counts()["recommendations_generated"])  # noqa: E731

    killed = run_until(cli, cli.start_args(RUN_ID), kill_when=once_then_after(generated, 0.4))
    assert killed.returncode == KILLED, tail(killed.stderr)
    assert status(cli)["state"] == "SNAPSHOT"
    assert sandbox.counts()["requests"].get("recs_get", 0) >= 1
    assert sandbox.counts()["jobs"] == 0
    resume_to_launched(cli)

    assert_launched_once(cli, sandbox)


# -- 7. the platform acting only after the client gave up ------------------------------------
# The contract (README, "Exactly once"): a request the platform acts on within the settle time
# after the client last had it in flight is never sent twice. These run a settle of 3 s against a
# platform that acts after 4 s (past the 2 s read timeout, inside read timeout + settle), and, for
# a kill, 2 s after receiving the request. Measuring the settle from the intent instead of from the
# end of the attempt sends the request a second time here.

SETTLE = 3.0
SETTLE_ENV = {"CFTRUNNER_RECONCILE_SETTLE": str(SETTLE)}


def wait_for_late_actions(seconds: float) -> None:
    """Let a request the sandbox is still holding be acted on before the effects are counted."""
    time.sleep(max(0.0, seconds))


@pytest.mark.parametrize("route", EFFECT_ROUTES)
def test_a_request_the_platform_acts_on_after_the_read_timeout_is_not_sent_again(
        cli: Cli, sandbox: Sandbox, route: str) -> None:
    """The sandbox sits on the request past the client's read timeout, then acts on it."""
    act_delay = READ_TIMEOUT + SETTLE - 1.0
    sandbox.add_fault(FaultRule(route=route, kind="latency", delay=act_delay, times=1))

    result = cli.run(*cli.start_args(RUN_ID), env=SETTLE_ENV)
    assert result.returncode == 0, tail(result.stderr)
    wait_for_late_actions(act_delay - READ_TIMEOUT + 0.5)

    assert_launched_once(cli, sandbox)


@pytest.mark.parametrize("route", ["trace_create", "finetune_create"])
def test_a_kill_before_the_platform_acts_on_a_sent_request_does_not_lead_to_sending_it_again(
        cli: Cli, sandbox: Sandbox, route: str) -> None:
    """The process dies with its request received but not yet acted on; `resume` follows."""
    act_delay = SETTLE - 1.0
    # Every request on the route is held, so with several items in flight none lands before
    # the kill; the held ones still act after the kill, while the resume runs at full speed.
    sandbox.add_fault(FaultRule(route=route, kind="latency", delay=act_delay))
    received = lambda: sandbox.counts()["requests"].get(route, 0) >= 1  # noqa: E731

    killed = run_until(cli, cli.start_args(RUN_ID), kill_when=received, env=SETTLE_ENV)
    killed_at = time.monotonic()
    sandbox.clear_faults()
    assert killed.returncode == KILLED, tail(killed.stderr)
    assert not ACTED_ON[route](sandbox.counts())
    resume_to_launched(cli, env=SETTLE_ENV)
    wait_for_late_actions(killed_at + act_delay + 0.5 - time.monotonic())

    assert_launched_once(cli, sandbox)
