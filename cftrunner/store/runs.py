"""Creating runs with their items (and their lease, when created held), and asking to cancel."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta

from cftrunner.clock import utcnow
from cftrunner.exceptions import RunExistsError
from cftrunner.prompts import Prompt, prompt_digest
from cftrunner.records import Holder, Run
from cftrunner.states import TERMINAL, ItemStage
from cftrunner.store import dialect
from cftrunner.store.core import Core
from cftrunner.store.rows import lease_values
from cftrunner.store.schema import items, prompt_uses, runs
from cftrunner.store.writes import Tx

ITEM_BATCH = 1000  # item rows per INSERT when a run is created


class Runs(Core):
    """The writes that make a run, and a cancel request, each a transaction of its own."""

    def create_run(self, run: Run, prompts: Iterable[str | Prompt],
                   lease: Holder | None = None) -> None:
        """Store a run and its items together, or nothing; with `lease`, already held by it.

        `prompts` may be a stream (see `prompts.iter_prompts`): an error it raises part way rolls
        the whole run back."""
        with self.tx() as tx:
            # Timed once the write lock is held, so the stored lease expiry is not early.
            self.insert_run(tx, run, prompts, lease, utcnow())

    def insert_run(self, tx: Tx, run: Run, prompts: Iterable[str | Prompt], lease: Holder | None,
                   now: datetime) -> None:
        """Insert a run and its items inside `tx`, the items `ITEM_BATCH` rows at a time, so a
        large stream of prompts is never held as rows all at once. A run of a cycle notes each
        prompt as used by the cycle (`prompt_uses`), so that its next run takes new ones. With
        `lease`, the run is stored held by it until `now` + its seconds."""
        # Not a look, then an insert: on PostgreSQL two creators of one id would both look first.
        created = dialect.insert_ignoring_duplicates(
            tx.conn, runs,
            id=run.id, project_id=run.project_id, model_alias=run.model_alias,
            judge_model=run.judge_model, split_percentage=run.split_percentage,
            prompts_source=run.prompts_source, job_name=run.job_name,
            state=run.state.value, created_at=now, updated_at=now, state_changed_at=now,
            cycle=run.cycle, cancel_requested=False, judge_config=run.judge_config,
            gate_config=run.gate_config, loop_config=run.loop_config,
            prompt_source=run.prompt_source, skip_reason=run.skip_reason, base_url=run.base_url,
            dataset_id=run.dataset_id,
            **(lease_values(lease, now + timedelta(seconds=lease.seconds)) if lease else {}))
        if not created:
            raise RunExistsError(
                f"run {run.id} already exists: use `cftrunner resume {run.id}` to continue it")
        numbered = enumerate(Prompt(p) if isinstance(p, str) else p for p in prompts)
        count = 0
        while chunk := list(itertools.islice(numbered, ITEM_BATCH)):
            tx.conn.execute(items.insert(), [
                {"run_id": run.id, "position": i, "prompt": p.text,
                 "stage": ItemStage.PENDING.value, "judge_attempts": 0, "updated_at": now}
                for i, p in chunk])
            if run.cycle is not None:
                self._note_uses(tx, run, chunk, now)
            count += len(chunk)
        tx.event(run.id, "run_created", items=count)

    @staticmethod
    def _note_uses(tx: Tx, run: Run, chunk: list[tuple[int, Prompt]], now: datetime) -> None:
        uses = {prompt_digest(p.text): {"cycle": run.cycle, "run_id": run.id, "position": i,
                                        "tag": p.tag, "used_at": now} for i, p in chunk}
        # A prompt used again replaces its earlier use; a run holds no prompt twice.
        tx.conn.execute(prompt_uses.delete().where(prompt_uses.c.cycle == run.cycle,
                                                   prompt_uses.c.digest.in_(list(uses))))
        tx.conn.execute(prompt_uses.insert(), [{"digest": d, **use} for d, use in uses.items()])

    def request_cancel(self, run_id: str) -> bool:
        """Mark a live run for cancelling; False when it has already ended."""
        with self.tx() as tx:
            result = tx.conn.execute(
                runs.update().where(runs.c.id == run_id,
                                    runs.c.state.not_in([s.value for s in TERMINAL]))
                .values(cancel_requested=True))
            if result.rowcount == 1:
                tx.event(run_id, "cancel_requested")
        return result.rowcount == 1
