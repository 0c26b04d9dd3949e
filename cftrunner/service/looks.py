"""The commands that read: status, show, and the plan of a run before it starts."""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass

from cftrunner import api
from cftrunner.clock import utcnow
from cftrunner.config.cycle import cycle_name
from cftrunner.config.settings import Settings
from cftrunner.driver import Driver
from cftrunner.exceptions import InputError
from cftrunner.prompt_source import every_prompt, holdout_places
from cftrunner.records import RunSpec
from cftrunner.run_ids import check_run_id
from cftrunner.service import preflight
from cftrunner.service.runs import MISSING_KEY
from cftrunner.states import RunState
from cftrunner.store import Store, missing_sqlite_file
from cftrunner.views import plan
from cftrunner.views import status as render


def plan_text(settings: Settings, spec: RunSpec, cycle: str | None = None) -> str:
    """What `start --dry-run` prints: the checks before a run (reads only), then the plan of
    the run (`plan.lines`); no POST is sent and no state database is created."""

    if not settings.api_key:
        raise InputError(MISSING_KEY)
    holdout = holdout_places(spec.loop.holdout, spec.loop.holdout_source)
    items = sum(1 for _ in every_prompt(spec.prompts_source, holdout))
    name = cycle_name(spec.project_id, spec.model_alias, cycle)
    return "\n".join([f"would start a run of {items} prompts from {spec.prompts_source}",
                      *plan_lines(settings, spec, name, items)])


def plan_lines(settings: Settings, spec: RunSpec, name: str, items: int) -> list[str]:
    """The plan of a run of `items` prompts: the checks before it (reads only), then what it
    would do; no state database is created."""
    with contextlib.ExitStack() as stack:
        url = settings.db_url
        if missing_sqlite_file(url) is not None:  # none is made: a throwaway one, with no runs
            url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/plan.db"
        return _plan_on(Store(url), settings, spec, name, items)


def _plan_on(store: Store, settings: Settings, spec: RunSpec, name: str,
             items: int) -> list[str]:
    try:
        driver = Driver(store, settings)
        try:
            checked = preflight.check(driver, spec)
        finally:
            driver.client.close()
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


@dataclass(frozen=True)
class RunFilter:
    """Which runs `status` lists: in one of `states` (any when empty), of `cycle` (any when
    None), the `limit` newest (all when None)."""

    states: tuple[RunState, ...] = ()
    cycle: str | None = None
    limit: int | None = None

    def words(self) -> str:
        """The filter as the options that asked for it."""
        return " ".join([*(f"--state {s.value}" for s in self.states),
                         *([f"--cycle {self.cycle}"] if self.cycle is not None else []),
                         *([f"--limit {self.limit}"] if self.limit is not None else [])])


def status_text(settings: Settings, run_id: str | None, as_json: bool,
                only: RunFilter = RunFilter()) -> str:
    """`status`: one run in detail, or the runs `only` lets through, newest first."""
    if run_id is not None:
        check_run_id(run_id)
    if only.limit is not None and only.limit < 1:
        raise InputError("--limit must be 1 or more")
    now = utcnow()
    if run_id is not None:
        summary = api.run(run_id, settings.db_url)
        if as_json:
            return json.dumps(render.to_json(summary), indent=2)
        return render.detail(summary, now)
    summaries = api.runs(settings.db_url, states=only.states, cycle=only.cycle, limit=only.limit)
    if as_json:
        return json.dumps([render.to_json(s) for s in summaries], indent=2)
    if not summaries and only != RunFilter():
        return f"no runs match {only.words()}"
    return render.table(summaries, now)


def show_text(settings: Settings, run_id: str, position: int, as_json: bool) -> str:
    item, completions = api.item(run_id, position, settings.db_url)
    if as_json:
        return json.dumps(render.item_to_json(item, completions), indent=2, ensure_ascii=False)
    return render.item_detail(item, completions)
