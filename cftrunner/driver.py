"""Drives a run through its states: holds it, calls each state's stage, and ends it cleanly.

What each state does is in `stages`; what they use while they do it (client, checkpoints,
retries, effects) in `session`; who may drive is in `ownership`."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import replace

import structlog

from cftrunner.clock import utcnow
from cftrunner.exceptions import (
    AuthError,
    BadResponseError,
    InputError,
    KeyRejected,
    LeaseLost,
    ModelNotFound,
    ModelsLoading,
    RejectedError,
    RunBusy,
    RunStopped,
    StillTraining,
)
from cftrunner.holds import Lease
from cftrunner.ownership import current_owner
from cftrunner.prompts import Prompt
from cftrunner.records import Run, RunSpec
from cftrunner.run_ids import new_run_id
from cftrunner.session import Session
from cftrunner.shutdown import Cancelled
from cftrunner.stages import STAGES
from cftrunner.stages.items import find_dataset_if_free, item_stage, work_items
from cftrunner.states import RunState

log = structlog.get_logger("cftrunner")


def new_run(run_id: str, spec: RunSpec, cycle: str | None = None,
            base_url: str | None = None) -> Run:
    """The record of a new run of `spec`, not stored yet."""
    now = utcnow()
    return Run(
        id=run_id, project_id=spec.project_id, model_alias=spec.model_alias,
        judge_model=spec.judge_model, split_percentage=spec.split_percentage,
        prompts_source=spec.prompts_source,
        # Unique to the run, so the job can be found again when its creation answer is lost.
        job_name=f"cftrunner-{run_id}-{secrets.token_hex(4)}",
        state=RunState.CREATED, created_at=now, updated_at=now, state_changed_at=now,
        cycle=cycle, judge_config=spec.judge.to_json(), gate_config=spec.gate.to_json(),
        loop_config=spec.loop.to_json(), base_url=base_url)


class Driver(Session):
    """Drives runs for this process: the stages' `Context` (see `Session`) with the loop on top."""

    def create(self, spec: RunSpec, prompts: Iterable[str | Prompt], cycle: str | None = None,
               dataset_id: str | None = None) -> Run:
        """Store a new run with its items, holding its lease from the first moment; with the
        project's dataset when the checks before it found it."""
        run_id = spec.run_id or new_run_id()
        lease = Lease(run_id, current_owner(), self.settings.lease_seconds)
        run = replace(new_run(run_id, spec, cycle, self.settings.base_url), dataset_id=dataset_id)
        started = time.monotonic()
        self.store.create_run(run, prompts, lease)
        self.ownership.adopt(lease, started)
        return self.store.run(run_id)

    def check_bound(self, run: Run) -> None:
        """Refuse to work on a run against another server than the one it was started on: its
        traces, dataset and job are there. (A run stored before runs kept it is not bound.)"""
        if run.base_url is not None and run.base_url != self.settings.base_url:
            raise InputError(f"run {run.id} was started on {run.base_url}, not on "
                             f"{self.settings.base_url} (base_url, --base-url or "
                             "CFTRUNNER_BASE_URL): nothing was sent")

    def drive(self, run_id: str) -> Run:
        """Take the run from wherever it stands to a terminal state; raise RunStopped if it cannot
        go on now, with everything obtained so far stored."""
        self.check_bound(self.store.run(run_id))
        run = self.ownership.take(run_id)
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            with self.ownership.kept():
                self.ownership.join(run_id)
                while not run.finished:
                    self.checkpoint()
                    STAGES[run.state](self, run)
                    run = self.store.run(run_id)
                # The terminal state may have been written by a process that took the run over.
                self.ownership.ensure()
        except Cancelled:
            run = self.store.run(run_id)
            with self.tx() as tx:
                tx.transition_run(run_id, run.state, RunState.CANCELLED,
                                  failure_reason="cancelled on request")
            log.warning("run_cancelled", state=run.state.value)
            run = self.store.run(run_id)
        except (StillTraining, ModelsLoading) as exc:
            # Not an error: the job trains for hours, models load for minutes; the next resume
            # or tick looks again.
            log.info("still_training" if isinstance(exc, StillTraining) else "models_loading",
                     reason=exc.message)
            run = self.store.run(run_id)
        except LeaseLost as exc:
            log.error("lease_lost", reason=exc.message)
            raise
        except RunStopped as exc:
            self._record_error(run_id, exc.message)
            log.warning("run_stopped", state=self.store.run(run_id).state.value, reason=exc.message)
            raise
        except ModelNotFound as exc:
            self._record_error(run_id, exc.message)
            log.error("run_stopped", reason=exc.message, error="model_not_found")
            raise
        except (AuthError, RejectedError, BadResponseError) as exc:
            message = f"{exc.message}; fix the cause, then `cftrunner resume {run_id}`"
            self._record_error(run_id, message)
            log.error("run_stopped", reason=message, error=exc.kind)
            raise (KeyRejected if isinstance(exc, AuthError) else RunStopped)(message) from None
        finally:
            self.ownership.leave()
            self.ownership.release()
            structlog.contextvars.unbind_contextvars("run_id")
        return run

    def work(self, run_id: str) -> Run:
        """Work on the run's items beside any other workers, on this host or others; once none
        is left, take the run through its run-level steps unless another process holds it."""
        run = self.store.run(run_id)
        if run.finished:
            return run
        self.check_bound(run)
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            self.ownership.join(run_id)
            if STAGES.get(run.state) is item_stage:  # items may be left to work on
                if run.dataset_id is None:
                    find_dataset_if_free(self, run)
                work_items(self, self.store.run(run_id))
            try:
                return self.drive(run_id)
            except RunBusy as exc:
                log.info("worker_finished", reason=exc.message)
                return self.store.run(run_id)
        except Cancelled:
            log.warning("worker_cancelled")
            return self.store.run(run_id)
        finally:
            self.ownership.leave()
            structlog.contextvars.unbind_contextvars("run_id")

    def _record_error(self, run_id: str, message: str) -> None:
        if not self.ownership.lost():
            with contextlib.suppress(LeaseLost), self.tx() as tx:
                tx.record_error(run_id, message)
