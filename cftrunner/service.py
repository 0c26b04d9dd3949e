"""One library call per command: start, resume, status, demo and the sandbox, with their checks."""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from cftrunner import preflight, render
from cftrunner.clock import utcnow
from cftrunner.config import Cycle, Resolved, cycle_name
from cftrunner.display import Display, no_display
from cftrunner.exceptions import (
    InputError,
    Interrupted,
    ItemNotFoundError,
    RunBusy,
    RunExistsError,
)
from cftrunner.lease import busy, current_owner, keeps_out, provably_dead
from cftrunner.prompt_source import every_prompt, holdout_places
from cftrunner.records import Effect, EffectStatus, Run, RunSpec
from cftrunner.run_ids import check_run_id, new_run_id
from cftrunner.runner import Runner
from cftrunner.settings import Settings
from cftrunner.shutdown import Stop
from cftrunner.states import RunState
from cftrunner.store import Store, missing_sqlite_file
from cftrunner.tick import Decision, source_of, spec_from
from cftrunner.tick import tick as run_tick

MISSING_KEY = "no API key: set API_KEY (or PREMAI_API_KEY), or pass --api-key-file"


def start(settings: Settings, spec: RunSpec, on_created: Callable[[str], None],
          stop: Stop | None = None, display: Display = no_display, cycle: str | None = None) -> Run:
    """Check everything, store the run with its items, announce its id, then drive it (with
    `display` showing its progress). `cycle`: the configured cycle's own name, if it has one."""
    if spec.run_id is not None:
        check_run_id(spec.run_id)
    if not settings.api_key:
        raise InputError(MISSING_KEY)
    for name, value in (("project id", spec.project_id), ("model alias", spec.model_alias),
                        ("judge model", spec.judge_model)):
        if not value.strip():
            raise InputError(f"the {name} is empty")
    # Every prompt is checked (none of them held out) before any request or database; then
    # read again as the items are stored, so they are never all held at once. A file changed in
    # between is checked again as it is stored: a bad prompt rolls the whole run back.
    holdout = holdout_places(spec.loop.holdout, spec.loop.holdout_source)
    for _ in every_prompt(spec.prompts_source, holdout):
        pass
    prompts = every_prompt(spec.prompts_source, holdout)
    store = Store(settings.db_url)
    try:
        runner = Runner(store, settings, stop=stop)
        spec = replace(spec, run_id=spec.run_id or new_run_id(),
                       prompts_source=str(Path(spec.prompts_source).resolve()))
        try:
            if store.has_run(spec.run_id or ""):  # refused before any request
                raise RunExistsError(f"run {spec.run_id} already exists: use `cftrunner resume "
                                     f"{spec.run_id}` to continue it")
            with structlog.contextvars.bound_contextvars(run_id=spec.run_id):
                checked = preflight.check(runner, spec)
                preflight.warn(checked)
            run = runner.create(spec, prompts, cycle_name(spec.project_id, spec.model_alias, cycle),
                                dataset_id=checked.dataset_id)
        except RunExistsError:
            _raise_if_driven(store.run(spec.run_id or ""))
            raise
        on_created(run.id)
        with display(store, run.id):
            return runner.drive(run.id)
    finally:
        store.close()


def plan_text(settings: Settings, spec: RunSpec, cycle: str | None = None) -> str:
    """What `start --dry-run` prints: the checks before a run (reads only), then the plan of
    the run (`plan.lines`); no POST is sent and no state database is created."""

    if not settings.api_key:
        raise InputError(MISSING_KEY)
    holdout = holdout_places(spec.loop.holdout, spec.loop.holdout_source)
    items = sum(1 for _ in every_prompt(spec.prompts_source, holdout))
    name = cycle_name(spec.project_id, spec.model_alias, cycle)
    return "\n".join([f"would start a run of {items} prompts from {spec.prompts_source}",
                      *_plan(settings, spec, name, items)])


def _plan(settings: Settings, spec: RunSpec, name: str, items: int) -> list[str]:
    with contextlib.ExitStack() as stack:
        url = settings.db_url
        if missing_sqlite_file(url) is not None:  # none is made: a throwaway one, with no runs
            url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/plan.db"
        return _plan_on(Store(url), settings, spec, name, items)


def _plan_on(store: Store, settings: Settings, spec: RunSpec, name: str,
             items: int) -> list[str]:
    from cftrunner import plan

    try:
        runner = Runner(store, settings)
        try:
            checked = preflight.check(runner, spec)
        finally:
            runner.client.close()
        last = None
        for run in store.runs():
            tokens = store.tokens_used(run.id) if run.cycle == name else 0
            if tokens:
                last = plan.LastRun(run.id, store.summary(run).total_items, tokens)
                break
    finally:
        store.close()
    return plan.lines(items, checked, settings.base_url, spec.project_id,
                      settings.judge_attempts, spec.loop, last)


def _already_ended(run: Run) -> str:
    if run.state is RunState.CANCELLED:
        return f"run {run.id} is already cancelled"
    raise InputError(f"run {run.id} already ended {run.state.value}; nothing to cancel")


def _raise_if_driven(run: Run) -> None:
    """A run another live process holds is busy (exit 75), whatever was asked of it."""
    me = current_owner()
    if run.lease is not None and keeps_out(run.lease, utcnow(),
                                           lambda held: provably_dead(held.owner, me)):
        raise busy(run.id, run.lease)


def resume(settings: Settings, run_id: str, stop: Stop | None = None,
           display: Display = no_display, worker: bool = False) -> Run:
    """Drive the run alone (another live driver makes it busy), or, as a `worker`, work on its
    items beside others, then drive it unless another process does."""
    check_run_id(run_id)
    store = Store.existing(settings.db_url)
    try:
        run = store.run(run_id)
        if run.finished:
            return run
        if not settings.api_key:
            raise InputError(MISSING_KEY)
        runner = Runner(store, settings, stop=stop)
        with display(store, run_id):
            return runner.work(run_id) if worker else runner.drive(run_id)
    finally:
        store.close()


def tick(resolved: Resolved, on_created: Callable[[str], None], stop: Stop | None = None,
         display: Display = no_display, cycle: Cycle | None = None) -> tuple[Decision, Run | None]:
    """Resume `cycle`'s unfinished run (by default the only or first cycle), start one when due,
    or decide to wait."""
    if not resolved.settings.api_key:
        raise InputError(MISSING_KEY)
    cycle = cycle or resolved.cycle
    scanned = source_of(spec_from(cycle, None, "tick"))  # bad input stores nothing
    store = Store(resolved.settings.db_url)
    try:
        return run_tick(Runner(store, resolved.settings, stop=stop), cycle, on_created, display,
                        scanned)
    finally:
        store.close()


def preview_text(settings: Settings, cycle: Cycle) -> str:
    """What `tick` would do for the cycle: one line, then the plan of a run it would start
    (`plan_text`); reads, never writes, and creates no state database where there is none."""
    from cftrunner.prompt_source import describe
    from cftrunner.tick import preview

    store = None if missing_sqlite_file(settings.db_url) else Store(settings.db_url)
    try:
        decision = preview(store, cycle)
    finally:
        if store is not None:
            store.close()
    if decision.action == "start":
        if not settings.api_key:
            raise InputError(MISSING_KEY)
        spec = spec_from(cycle, None, "tick")
        prompts = decision.prompts or {}
        items = int(prompts.get("new", 0)) + int(prompts.get("reused", 0))
        name = cycle_name(spec.project_id, spec.model_alias, cycle.name)
        return "\n".join([f"would start a run of {describe(decision.prompts)}",
                          *_plan(settings, spec, name, items)])
    if decision.action == "skip":
        return f"would skip: {decision.reason}"
    if decision.action == "resume":
        return f"would resume {decision.run_id}: {decision.reason}"
    return f"nothing to do: {decision.reason}"


@dataclass(frozen=True)
class Ticked:
    """What a tick did for one cycle: its decision and run, or the error that ended its turn."""

    cycle: Cycle
    decision: Decision | None = None
    run: Run | None = None
    error: Exception | None = None


def tick_each(resolved: Resolved, cycles: Iterable[Cycle], stop: Stop | None = None,
              display: Display = no_display) -> Iterator[Ticked]:
    """Tick each cycle in turn, each in isolation: an error ends its own turn, not the others'.
    A stop (SIGTERM, SIGINT) ends them all."""
    if not resolved.settings.api_key:
        raise InputError(MISSING_KEY)
    for cycle in cycles:
        if stop is not None and stop.requested:
            signum = stop.signum or signal.SIGTERM
            raise Interrupted(signum, f"stopped by {signal.Signals(signum).name} before cycle "
                                      f"{cycle.title}")
        try:
            decision, run = tick(resolved, lambda _run_id: None, stop, display, cycle)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as this cycle's outcome, by the caller
            yield Ticked(cycle, error=exc)
        else:
            yield Ticked(cycle, decision, run)


def cancel(settings: Settings, run_id: str) -> str:
    """Cancel a run: at once when nobody drives it, else at the driver's next checkpoint."""
    check_run_id(run_id)
    store = Store.existing(settings.db_url)
    try:
        if store.run(run_id).finished or not store.request_cancel(run_id):
            return _already_ended(store.run(run_id))
        runner = Runner(store, settings)
        try:
            run = runner.take(run_id)
        except RunBusy as busy:
            return f"cancel requested: {busy.message}; it stops at its next checkpoint"
        try:
            if run.finished:  # it ended between the request and the lease
                return _already_ended(run)
            with runner.tx() as tx:
                tx.transition_run(run_id, run.state, RunState.CANCELLED,
                                  failure_reason="cancelled on request")
        finally:
            runner.release()
        return f"run {run_id} cancelled"
    finally:
        store.close()


# What a person's "it happened" stores as each kind of effect's outcome, and the remote id it
# needs (`--id`): the trace, snapshot or job that the request made.
_SETTLED_OUTCOMES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "trace": ("trace_id", {}),
    # Queued: the corrections check then waits until the platform says it is done.
    "add": (None, {"status": "queued", "success": True, "datapoint_id": None}),
    "snapshot": ("snapshot_id", {}),
    "recs": (None, {}),
    "launch": ("job_id", {}),
}


def settle(settings: Settings, run_id: str, target: str, happened: bool,
           remote_id: str | None) -> str:
    """A person's word on an effect whose outcome cftrunner could not tell: it happened (and
    made `remote_id`), or it did not (and is sent again). The next resume or tick goes on."""
    store = Store.existing(settings.db_url)
    try:
        run = store.run(run_id)
        effect = _effect_to_settle(store, run, target)
        if effect.status not in (EffectStatus.PREPARED, EffectStatus.UNKNOWN):
            return f"{effect.key} of run {run_id} is already {effect.status.value}: nothing to settle"
        outcome: dict[str, Any] | None = None
        if happened:
            field, outcome = _SETTLED_OUTCOMES[effect.kind]
            outcome = dict(outcome)
            if field is not None:
                if not remote_id or not remote_id.strip():
                    raise InputError(f"{effect.key} made a {field.removesuffix('_id')}: give its "
                                     "id with --id")
                outcome[field] = remote_id.strip()
            elif remote_id:
                raise InputError(f"{effect.key} needs no --id")
            if effect.kind == "trace" and store.trace_claimed(outcome["trace_id"]):
                raise InputError(f"trace {outcome['trace_id']} already belongs to another item")
        elif remote_id:
            raise InputError("--id goes with --happened")
        runner = Runner(store, settings)
        runner.take(run_id)
        try:
            with runner.tx() as tx:
                tx.settle_effect(effect, outcome)
        finally:
            runner.release()
        verdict = "happened" if happened else "did not happen; it is sent again"
        return f"{effect.key} of run {run_id} {verdict}; `cftrunner resume {run_id}` goes on"
    finally:
        store.close()


def _effect_to_settle(store: Store, run: Run, target: str) -> Effect:
    """The effect a `settle` TARGET names: its key, or an item's position (its trace or addition
    whose outcome is unknown)."""
    keys = [target]
    if target.isascii() and target.isdigit():
        keys = [f"trace:{int(target)}", f"add:{int(target)}"]
    found = [e for key in keys if (e := store.effect(run.id, key)) is not None]
    waiting = [e for e in found if e.status in (EffectStatus.PREPARED, EffectStatus.UNKNOWN)]
    if waiting or found:
        return (waiting or found)[-1]
    raise InputError(f"run {run.id} has no effect {target!r} (an item's position, or a key "
                     "such as trace:3, add:3, snapshot, recs, launch)")


def status_text(settings: Settings, run_id: str | None, as_json: bool) -> str:
    if run_id is not None:
        check_run_id(run_id)
    store = Store.existing(settings.db_url)
    try:
        now = utcnow()
        if run_id is not None:
            summary = store.summary(store.run(run_id))
            if as_json:
                return json.dumps(render.to_json(summary), indent=2)
            return render.detail(summary, now)
        summaries = [store.summary(run) for run in store.runs()]
        if as_json:
            return json.dumps([render.to_json(s) for s in summaries], indent=2)
        return render.table(summaries, now)
    finally:
        store.close()


def show_text(settings: Settings, run_id: str, position: int, as_json: bool) -> str:
    check_run_id(run_id)
    store = Store.existing(settings.db_url)
    try:
        run = store.run(run_id)
        item = store.item_at(run.id, position)
        if item is None:
            raise ItemNotFoundError(f"run {run_id} has no item {position} (items are numbered "
                                    "from 0, as in the logs)")
        completions = store.completions(item.id)
        if as_json:
            return json.dumps(render.item_to_json(item, completions), indent=2,
                              ensure_ascii=False)
        return render.item_detail(item, completions)
    finally:
        store.close()


DEMO_MODEL = "demo-safety-classifier-v1"


def demo(prompts_file: Path, latency: float, on_created: Callable[[str], None],
         display: Display = no_display) -> str:
    """A whole cycle against an in-process sandbox and a throwaway state file; the final status."""
    from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, Sandbox

    with tempfile.TemporaryDirectory(prefix="cftrunner-demo-") as tmp, Sandbox(
            api_key=DEFAULT_API_KEY, latency=latency, processing_seconds=0.5) as sandbox:
        settings = Settings(base_url=sandbox.url, db_url=f"sqlite:///{tmp}/demo.db",
                            api_key=DEFAULT_API_KEY, poll_interval=0.2)
        spec = RunSpec(project_id=DEFAULT_PROJECT_ID, model_alias=DEMO_MODEL,
                       prompts_source=str(prompts_file), judge_model="claude-4.5-sonnet")
        run = start(settings, spec, on_created, display=display)
        return status_text(settings, run.id, as_json=False)


def serve_sandbox(*, host: str, port: int, latency: float, error_rate: float, rate_limit: float,
                  retry_after: float, max_rps: float | None, burst: int, drop_rate: float,
                  late_rate: float, late_delay: float, judge_malformed: float,
                  judge_truncated: float, structured_output: bool, list_lag: float,
                  list_lag_uneven: bool, seed: int,
                  require_key: str | None, verbose: bool, announce: Callable[[str], None]) -> None:
    from cftrunner.sandbox import DEFAULT_PROJECT_ID, FaultRule, Sandbox

    sandbox = Sandbox(api_key=require_key, latency=latency, seed=seed, rate_limit_rps=max_rps,
                      rate_limit_burst=burst, structured_output=structured_output,
                      list_lag=list_lag, list_lag_uneven=list_lag_uneven)
    rules: list[dict[str, Any]] = [
        {"kind": "status", "status": 429, "retry_after": retry_after, "probability": rate_limit},
        {"kind": "status", "status": 503, "probability": error_rate},
        {"kind": "drop", "probability": drop_rate},
        {"kind": "late", "delay": late_delay, "probability": late_rate},
        {"kind": "malformed", "route": "chat", "judge": True, "probability": judge_malformed},
        {"kind": "truncated", "route": "chat", "judge": True, "probability": judge_truncated},
    ]
    for rule in rules:
        if rule["probability"] > 0:
            sandbox.add_fault(FaultRule(**rule))
    sandbox.serve_forever(host, port, verbose=verbose, on_ready=lambda url: announce(
        f"Prem sandbox on {url}  project {DEFAULT_PROJECT_ID}  (Ctrl-C stops it)"))
