"""The metrics file: each cycle's last run and the invocation's exit status, in Prometheus's text format.

Written with prometheus_client after every start, resume, tick and cancel, atomically as
node_exporter's textfile collector wants it: into a hidden file in the same folder, synced, then
renamed over the file, so a reader sees the old file or the new one, never a part. The exit
statuses of the other commands, and, when the state database was not read this time, the
cycles' figures, are carried over from the file as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cftrunner.clock import utcnow
from cftrunner.config.cycle import Cycle
from cftrunner.states import ItemStage, RunState
from cftrunner.store import Store

EXIT_CODE = "cftrunner_invocation_exit_code"
INVOKED = "cftrunner_invocation_timestamp_seconds"
# Each gauge: its help, and its labels.
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    EXIT_CODE: ("The exit status of the last invocation of each command.", ("command",)),
    INVOKED: ("When the last invocation of each command ended, in Unix seconds.", ("command",)),
    "cftrunner_cycle_interval_seconds": ("The cycle's configured interval.", ("cycle",)),
    "cftrunner_cycle_last_run_info": ("The cycle's latest run, by id: always 1.",
                                      ("cycle", "run_id")),
    "cftrunner_cycle_last_run_state": ("1 for the state the cycle's latest run is in, 0 for the "
                                       "others.", ("cycle", "state")),
    "cftrunner_cycle_last_run_start_timestamp_seconds": ("When the cycle's latest run was "
                                                         "created.", ("cycle",)),
    "cftrunner_cycle_last_run_duration_seconds": ("From the latest run's creation to its last "
                                                  "change of state.", ("cycle",)),
    "cftrunner_cycle_last_run_items": ("The latest run's items at each stage.",
                                       ("cycle", "stage")),
    "cftrunner_cycle_last_run_mean_score": ("The latest run's mean judge score over the items "
                                            "it added, once its gate has looked.", ("cycle",)),
    "cftrunner_cycle_last_run_tokens": ("Tokens of the latest run's chat completions.",
                                        ("cycle",)),
    "cftrunner_cycle_last_success_timestamp_seconds": (
        "When a run of the cycle last reached an end of exit status 0 (LAUNCHED, TRAINED, "
        "PROMOTED, NOT_PROMOTED or SKIPPED).", ("cycle",)),
    "cftrunner_notifications": ("Notifications by delivery status.", ("status",)),
}
SUCCEEDED = tuple(state.value for state in (RunState.LAUNCHED, RunState.TRAINED, RunState.PROMOTED,
                                            RunState.NOT_PROMOTED, RunState.SKIPPED))
Samples = dict[str, list[tuple[dict[str, str], float]]]


def write(path: str, cycles: Sequence[Cycle], store: Store | None, command: str,
          exit_code: int, now: datetime | None = None) -> None:
    """Write the file at `path` for the invocation of `command` that ends with `exit_code`; the
    cycles' figures from `store`, or as the file had them when it is None."""
    target = Path(path)
    before = _previous(target)
    registry = CollectorRegistry(auto_describe=True)
    gauges = {name: Gauge(name, text, labels, registry=registry)
              for name, (text, labels) in GAUGES.items()}
    for name in (EXIT_CODE, INVOKED):
        _carry(gauges[name], [(labels, value) for labels, value in before.get(name, [])
                              if labels.get("command") != command])
    gauges[EXIT_CODE].labels(command=command).set(exit_code)
    gauges[INVOKED].labels(command=command).set((now or utcnow()).timestamp())
    if store is None:
        for name, gauge in gauges.items():
            if name not in (EXIT_CODE, INVOKED):
                _carry(gauge, before.get(name, []))
    else:
        _cycles(gauges, cycles, store)
    replace_atomically(target, generate_latest(registry))


def _cycles(gauges: dict[str, Gauge], cycles: Sequence[Cycle], store: Store) -> None:
    """Each cycle's figures, as the state database has them."""
    for cycle in cycles:
        if cycle.project_id and cycle.model_alias:
            gauges["cftrunner_cycle_interval_seconds"].labels(cycle=cycle.title).set(cycle.interval)
    for name, run in store.latest_runs().items():
        gauges["cftrunner_cycle_last_run_info"].labels(cycle=name, run_id=run.id).set(1)
        for state in RunState:
            gauges["cftrunner_cycle_last_run_state"].labels(cycle=name, state=state.value).set(
                1 if run.state is state else 0)
        gauges["cftrunner_cycle_last_run_start_timestamp_seconds"].labels(cycle=name).set(
            run.created_at.timestamp())
        gauges["cftrunner_cycle_last_run_duration_seconds"].labels(cycle=name).set(
            (run.state_changed_at - run.created_at).total_seconds())
        _, stages = store.stage_counts(run.id)
        for stage in ItemStage:
            gauges["cftrunner_cycle_last_run_items"].labels(cycle=name, stage=stage.value).set(
                stages.get(stage.value, 0))
        mean = (run.gate_result or {}).get("mean_score")
        if mean is not None:
            gauges["cftrunner_cycle_last_run_mean_score"].labels(cycle=name).set(mean)
        gauges["cftrunner_cycle_last_run_tokens"].labels(cycle=name).set(store.tokens_used(run.id))
    for name, at in store.last_reached(SUCCEEDED).items():
        gauges["cftrunner_cycle_last_success_timestamp_seconds"].labels(cycle=name).set(
            at.timestamp())
    for status, count in store.delivery_counts().items():
        gauges["cftrunner_notifications"].labels(status=status).set(count)


def _previous(path: Path) -> Samples:
    """The samples of the file as it is, by metric name; none when it is missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        return {family.name: [(dict(s.labels), float(s.value)) for s in family.samples]
                for family in text_string_to_metric_families(text)}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def _carry(gauge: Gauge, samples: list[tuple[dict[str, str], float]]) -> None:
    for labels, value in samples:
        with contextlib.suppress(ValueError):  # labels of another version of this file
            gauge.labels(**labels).set(value)


def replace_atomically(path: Path, data: bytes) -> None:
    """Replace the file at `path` with `data` in one rename, from a hidden file beside it that
    the textfile collector does not read (it reads *.prom); readable by all, as a collector
    running as another user needs."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
