"""The metrics file from real `python -m cftrunner` processes, read with prometheus_client's own parser and
checked against `status --json`: each cycle's last run, its last success, each command's exit status."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cftrunner import crashpoints
from cftrunner.sandbox import DEFAULT_API_KEY
from cftrunner.states import ItemStage, RunState
from tests.acceptance import test_tick
from tests.acceptance.test_many_cycles import DOOMED_FAULT
from tests.acceptance.test_tick import KILLED, Cron

pytestmark = pytest.mark.slow

make_cron = test_tick.make_cron  # a sandbox, and a config file naming it and a state database
KEYS = {"interval": '"1h"', "metrics_file": '"metrics/cftrunner.prom"'}


def metrics_file(cron: Cron) -> Path:
    return cron.config.parent / "metrics" / "cftrunner.prom"


def read(cron: Cron) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Each sample's value, by metric name and labels, as prometheus_client parses the file."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    text = metrics_file(cron).read_text(encoding="utf-8")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def one(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
        **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def make(make_cron: Callable[..., Cron], keys: dict[str, str] | None = None) -> Cron:
    cron = make_cron({**KEYS, **(keys or {})})
    metrics_file(cron).parent.mkdir()
    return cron


def test_after_a_tick_the_file_says_what_status_json_says_of_the_cycle(
        make_cron: Callable[..., Cron]) -> None:
    cron = make(make_cron)

    result = cron.tick()

    assert result.returncode == 0, result.stderr
    [run] = cron.runs()
    cycle = run["cycle"]
    samples = read(cron)
    assert one(samples, "cftrunner_invocation_exit_code", command="tick") == 0
    assert one(samples, "cftrunner_cycle_last_run_info", cycle=cycle, run_id=run["run_id"]) == 1
    assert {state.value: one(samples, "cftrunner_cycle_last_run_state", cycle=cycle,
                             state=state.value) for state in RunState} == {
        state.value: float(state.value == run["state"]) for state in RunState}
    assert {stage.value: one(samples, "cftrunner_cycle_last_run_items", cycle=cycle,
                             stage=stage.value) for stage in ItemStage} == {
        stage.value: run["items"][stage.value] for stage in ItemStage}
    assert one(samples, "cftrunner_cycle_last_run_mean_score", cycle=cycle) == (
        run["gate"]["mean_score"])
    assert one(samples, "cftrunner_cycle_last_run_tokens", cycle=cycle) == run["gate"]["tokens_used"]
    assert one(samples, "cftrunner_cycle_last_run_start_timestamp_seconds", cycle=cycle) == (
        pytest.approx(seconds(run["created_at"]), abs=1e-3))
    assert one(samples, "cftrunner_cycle_last_run_duration_seconds", cycle=cycle) == pytest.approx(
        seconds(run["state_changed_at"]) - seconds(run["created_at"]), abs=1e-3)
    assert one(samples, "cftrunner_cycle_last_success_timestamp_seconds", cycle=cycle) == (
        pytest.approx(seconds(run["state_changed_at"]), abs=1e-3))
    assert one(samples, "cftrunner_cycle_interval_seconds", cycle=cycle) == 3600
    assert DEFAULT_API_KEY not in metrics_file(cron).read_text()


def test_each_command_s_exit_status_is_kept_beside_the_others(
        make_cron: Callable[..., Cron]) -> None:
    cron = make(make_cron, {"model_alias": '"doomed-model"'})
    cron.sandbox.add_fault(DOOMED_FAULT)
    config = ("--config", str(cron.config))

    failed = cron.tick()
    [run] = cron.runs()
    refused = cron.cli.run("cancel", run["run_id"], *config)  # it ended FAILED: nothing to cancel
    unknown = cron.cli.run("resume", "no-such-run", *config)
    shown = cron.cli.run("resume", run["run_id"], *config)  # shown as it ended, FAILED

    assert [r.returncode for r in (failed, refused, unknown, shown)] == [1, 2, 2, 1]
    samples = read(cron)
    assert samples["cftrunner_invocation_exit_code"] == {
        (("command", "tick"),): 1, (("command", "cancel"),): 2, (("command", "resume"),): 1}
    assert one(samples, "cftrunner_cycle_last_run_state", cycle=run["cycle"], state="FAILED") == 1
    assert "cftrunner_cycle_last_success_timestamp_seconds" not in samples  # it never succeeded
    assert set(samples["cftrunner_invocation_timestamp_seconds"]) == {
        (("command", "tick"),), (("command", "cancel"),), (("command", "resume"),)}


def test_a_key_the_api_refuses_is_exit_status_77_in_the_file(make_cron: Callable[..., Cron]) -> None:
    cron = make(make_cron)

    refused = cron.tick(env={"API_KEY": "sk-wrong-key-0123456789"})

    assert refused.returncode == 77
    assert one(read(cron), "cftrunner_invocation_exit_code", command="tick") == 77
    assert "sk-wrong-key-0123456789" not in metrics_file(cron).read_text()


def test_the_file_is_replaced_whole_by_a_rename_leaving_no_temporary_file(
        make_cron: Callable[..., Cron]) -> None:
    cron = make(make_cron)
    assert cron.tick().returncode == 0
    first = os.stat(metrics_file(cron))

    assert cron.tick().returncode == 0

    assert os.stat(metrics_file(cron)).st_ino != first.st_ino  # a new file, renamed over the old
    assert os.listdir(metrics_file(cron).parent) == ["cftrunner.prom"]
    umask = os.umask(0)
    os.umask(umask)
    assert first.st_mode & 0o777 == 0o644 & ~umask  # a collector running as another user reads it


def test_a_kill_mid_run_leaves_the_file_as_it_was_and_the_next_tick_updates_it(
        make_cron: Callable[..., Cron]) -> None:
    cron = make(make_cron)
    assert cron.tick(env={crashpoints.ENV: "generate.after_store"}).returncode == KILLED
    assert not metrics_file(cron).exists()

    assert cron.tick().returncode == 0

    [run] = cron.runs()
    assert one(read(cron), "cftrunner_cycle_last_run_state", cycle=run["cycle"],
               state="LAUNCHED") == 1


def test_a_metrics_file_that_cannot_be_written_is_a_warning_and_changes_nothing_else(
        make_cron: Callable[..., Cron]) -> None:
    cron = make_cron(KEYS)  # its folder is not there

    result = cron.tick()

    assert result.returncode == 0, result.stderr
    assert '"event": "metrics_failed"' in result.stderr
    assert cron.runs()[0]["state"] == "LAUNCHED"
    assert not metrics_file(cron).parent.exists()

