"""The commands that change a run: start, resume, cancel and settle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from cftrunner.config.cycle import cycle_name
from cftrunner.config.settings import Settings
from cftrunner.driver import Driver
from cftrunner.exceptions import InputError, RunBusy, RunExistsError
from cftrunner.ownership import Ownership, refuse_if_driven
from cftrunner.prompt_source import every_prompt, holdout_places
from cftrunner.records import Effect, EffectStatus, Run, RunSpec
from cftrunner.run_ids import check_run_id, new_run_id
from cftrunner.service import preflight
from cftrunner.shutdown import Stop
from cftrunner.states import RunState
from cftrunner.store import Store
from cftrunner.views.live import Display, no_display

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
        driver = Driver(store, settings, stop=stop)
        spec = replace(spec, run_id=spec.run_id or new_run_id(),
                       prompts_source=str(Path(spec.prompts_source).resolve()))
        try:
            if store.has_run(spec.run_id or ""):  # refused before any request
                raise RunExistsError(f"run {spec.run_id} already exists: use `cftrunner resume "
                                     f"{spec.run_id}` to continue it")
            with structlog.contextvars.bound_contextvars(run_id=spec.run_id):
                checked = preflight.check(driver, spec)
                preflight.warn(checked)
            run = driver.create(spec, prompts, cycle_name(spec.project_id, spec.model_alias, cycle),
                                dataset_id=checked.dataset_id)
        except RunExistsError:
            refuse_if_driven(store.run(spec.run_id or ""))
            raise
        on_created(run.id)
        with display(store, run.id):
            return driver.drive(run.id)
    finally:
        store.close()


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
        driver = Driver(store, settings, stop=stop)
        with display(store, run_id):
            return driver.work(run_id) if worker else driver.drive(run_id)
    finally:
        store.close()


def _already_ended(run: Run) -> str:
    if run.state is RunState.CANCELLED:
        return f"run {run.id} is already cancelled"
    raise InputError(f"run {run.id} already ended {run.state.value}; nothing to cancel")


def cancel(settings: Settings, run_id: str) -> str:
    """Cancel a run: at once when nobody drives it, else at the driver's next checkpoint."""
    check_run_id(run_id)
    store = Store.existing(settings.db_url)
    try:
        if store.run(run_id).finished or not store.request_cancel(run_id):
            return _already_ended(store.run(run_id))
        ownership = Ownership(store, settings.lease_seconds)
        try:
            run = ownership.take(run_id)
        except RunBusy as busy:
            return f"cancel requested: {busy.message}; it stops at its next checkpoint"
        try:
            if run.finished:  # it ended between the request and the lease
                return _already_ended(run)
            with ownership.tx() as tx:
                tx.transition_run(run_id, run.state, RunState.CANCELLED,
                                  failure_reason="cancelled on request")
        finally:
            ownership.release()
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
        ownership = Ownership(store, settings.lease_seconds)
        ownership.take(run_id)
        try:
            with ownership.tx() as tx:
                tx.settle_effect(effect, outcome)
        finally:
            ownership.release()
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
