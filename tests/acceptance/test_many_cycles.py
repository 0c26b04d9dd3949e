"""`cftrunner tick` over a config file of several [[cycles]]: each driven in turn, each in isolation."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable

import pytest

from cftrunner.sandbox import DEFAULT_PROJECT_ID, FaultRule, Sandbox
from tests.acceptance import test_ownership as ownership
from tests.acceptance import test_tick as cron_tests
from tests.acceptance.test_ownership import (
    BUSY,
    FEW_PROMPTS,
    Proc,
    error_lines,
    received,
    requests_sent,
    wait_until,
)
from tests.acceptance.test_tick import Cron
from tests.conftest import MODEL, state_stored

pytestmark = pytest.mark.slow

make_cron = cron_tests.make_cron  # a sandbox, and a config file naming it and a state database
spawn = ownership.spawn
ONE_HOUR = {"interval": '"1h"'}
NO_PROJECT = "0badc0de-0000-4000-8000-000000000000"
# A cycle whose model the API refuses every answer of: its run ends FAILED.
DOOMED = {"name": '"doomed"', "model_alias": '"doomed-model"'}
DOOMED_FAULT = FaultRule(route="chat", status=400, judge=False, match="doomed-model")


def entries(*cycles: dict[str, str]) -> str:
    """[[cycles]] tables, each from TOML values by key; a dotted key goes in its sub-table."""
    text = ""
    for cycle in cycles:
        text += "\n[[cycles]]\n" + "".join(f"{key} = {value}\n" for key, value in cycle.items()
                                           if "." not in key)
        for key, value in cycle.items():
            if "." in key:
                section, _, name = key.partition(".")
                text += f"[cycles.{section}]\n{name} = {value}\n"
    return text


def cycle_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """What each "cycle NAME: ..." line of stdout says, by name; every line is one."""
    lines = result.stdout.splitlines()
    assert all(line.startswith("cycle ") for line in lines), result.stdout
    return dict(line.removeprefix("cycle ").split(": ", 1) for line in lines)


def runs_by_cycle(cron: Cron) -> dict[str, list[dict[str, object]]]:
    """Every run, newest first, by its cycle's name."""
    runs: dict[str, list[dict[str, object]]] = {}
    for run in cron.runs():
        runs.setdefault(str(run["cycle"]), []).append(run)
    return runs


def launched(run: dict[str, object], verb: str = "started") -> str:
    return f"{verb} {run['run_id']}: LAUNCHED job {run['job_id']}"


def traces_by_project(sandbox: Sandbox, *projects: str) -> list[int]:
    """Datapoints added to each project's dataset."""
    added = Counter(point["dataset_id"] for point in sandbox.world.datapoints())
    return [added[sandbox.dataset_id(project)] for project in projects]


@pytest.fixture
def two_projects(make_cron: Callable[..., Cron]) -> tuple[Cron, str]:
    """Cycles "first" (the sandbox's project) and "second" (a project of its own) in one file."""
    probe = make_cron(ONE_HOUR)
    second = probe.sandbox.add_project()
    probe.config.write_text(probe.config.read_text() + entries(
        {"name": '"first"'}, {"name": '"second"', "project_id": f'"{second}"'}))
    return probe, second


def add_cycles(cron: Cron, *cycles: dict[str, str]) -> None:
    cron.config.write_text(cron.config.read_text() + entries(*cycles))


# -- every cycle, in turn -----------------------------------------------------------------------


def test_one_tick_launches_every_cycle_each_with_its_own_traces(
        two_projects: tuple[Cron, str]) -> None:
    cron, second = two_projects

    result = cron.tick()

    assert result.returncode == 0, result.stderr
    runs = runs_by_cycle(cron)
    [first_run], [second_run] = runs["first"], runs["second"]
    assert cycle_lines(result) == {"first": launched(first_run), "second": launched(second_run)}
    assert list(cycle_lines(result)) == ["first", "second"]  # the file's order
    assert (first_run["project_id"], second_run["project_id"]) == (DEFAULT_PROJECT_ID, second)
    assert traces_by_project(cron.sandbox, DEFAULT_PROJECT_ID, second) == [len(FEW_PROMPTS)] * 2
    assert cron.sandbox.counts()["jobs"] == 2
    assert error_lines(result.stderr) == []


def test_a_second_tick_right_after_has_nothing_to_do_for_either_cycle(
        two_projects: tuple[Cron, str]) -> None:
    cron, _ = two_projects
    assert cron.tick().returncode == 0
    sent = requests_sent(cron.sandbox)

    again = cron.tick()

    assert again.returncode == 0, again.stderr
    said = cycle_lines(again)
    for name, [run] in runs_by_cycle(cron).items():
        assert said[name].startswith(f"nothing to do: the last cycle {run['run_id']} LAUNCHED ")
    assert len(said) == 2
    assert requests_sent(cron.sandbox) == sent


def test_two_names_for_one_project_and_model_are_two_cycles(make_cron: Callable[..., Cron]) -> None:
    cron = make_cron(ONE_HOUR, entries({"name": '"daily"'}, {"name": '"weekly"'}))

    result = cron.tick()

    assert result.returncode == 0, result.stderr
    runs = runs_by_cycle(cron)
    assert sorted(runs) == ["daily", "weekly"]
    assert all(run["model_alias"] == MODEL for [run] in runs.values())
    assert cron.sandbox.counts()["jobs"] == 2


# -- one failing cycle does not stop the others -------------------------------------------------


def test_a_cycle_whose_project_does_not_exist_is_exit_2_with_no_run_and_the_next_launches(
        make_cron: Callable[..., Cron]) -> None:
    cron = make_cron(ONE_HOUR, entries({"name": '"ghost"', "project_id": f'"{NO_PROJECT}"'},
                                       {"name": '"real"'}))

    result = cron.tick()

    assert result.returncode == 2, result.stderr
    runs = runs_by_cycle(cron)
    assert "ghost" not in runs and runs["real"][0]["state"] == "LAUNCHED"
    said = cycle_lines(result)
    reason = (f"project {NO_PROJECT} not found at {cron.sandbox.url}; no run was created")
    assert said["ghost"] == f"error: {reason}"
    assert said["real"] == launched(runs["real"][0])
    assert error_lines(result.stderr) == [f"cftrunner: error: cycle ghost: {reason}"]


def test_a_cycle_whose_run_fails_is_exit_1_and_the_next_still_launches(
        make_cron: Callable[..., Cron]) -> None:
    cron = make_cron(ONE_HOUR, entries(DOOMED, {"name": '"real"'}))
    cron.sandbox.add_fault(DOOMED_FAULT)

    result = cron.tick()

    assert result.returncode == 1, result.stderr
    runs = runs_by_cycle(cron)
    [doomed], [real] = runs["doomed"], runs["real"]
    assert (doomed["state"], real["state"]) == ("FAILED", "LAUNCHED")
    said = cycle_lines(result)
    assert said["doomed"] == f"started {doomed['run_id']}: FAILED: {doomed['failure_reason']}"
    assert said["real"] == launched(real)
    assert error_lines(result.stderr) == [
        f"cftrunner: error: cycle doomed: run {doomed['run_id']} FAILED: "
        f"{doomed['failure_reason']}"]


def test_a_cycle_whose_prompts_file_is_missing_is_exit_2_and_the_other_still_runs(
        make_cron: Callable[..., Cron]) -> None:
    cron = make_cron(ONE_HOUR, entries({"name": '"lost"', "prompts": '"missing.json"'},
                                       {"name": '"fine"'}))

    result = cron.tick()

    assert result.returncode == 2, result.stderr
    said = cycle_lines(result)
    assert said["lost"].startswith("error: ") and "missing.json" in said["lost"]
    assert said["fine"] == launched(runs_by_cycle(cron)["fine"][0])
    assert "lost" not in runs_by_cycle(cron)
    [error] = error_lines(result.stderr)
    assert error == f"cftrunner: error: cycle lost: {said['lost'].removeprefix('error: ')}"


@pytest.mark.parametrize(("order", "status"), [
    (("doomed", "lost"), 1),
    (("lost", "doomed"), 2),
])
def test_the_exit_status_is_the_first_non_zero_one_in_the_file_s_order(
        make_cron: Callable[..., Cron], order: tuple[str, str], status: int) -> None:
    cycles = {"doomed": DOOMED, "lost": {"name": '"lost"', "prompts": '"missing.json"'}}
    cron = make_cron(ONE_HOUR, entries({"name": '"fine"'}, *(cycles[name] for name in order)))
    cron.sandbox.add_fault(DOOMED_FAULT)

    result = cron.tick()

    assert result.returncode == status, result.stderr
    assert list(cycle_lines(result)) == ["fine", *order]
    assert len(error_lines(result.stderr)) == 2


def test_a_cycle_another_process_drives_is_exit_75_and_the_other_still_launches(
        two_projects: tuple[Cron, str], spawn: Callable[..., Proc]) -> None:
    cron, _ = two_projects
    # The driver's first trace is held until the other tick has ended, however slowly it starts.
    cron.sandbox.add_fault(FaultRule(route="trace_create", kind="hold", times=1))
    driver = spawn(cron.cli, *cron.args, "--cycle", "first", env={"CFTRUNNER_READ_TIMEOUT": "120"})
    wait_until(lambda: received("trace_create")(cron.sandbox.counts()), "tracing", alive=driver)

    result = cron.tick()
    cron.sandbox.release_holds()

    assert result.returncode == BUSY, result.stderr
    said = cycle_lines(result)
    assert said["first"].startswith("error: ") and "driven by" in said["first"]
    assert said["second"] == launched(runs_by_cycle(cron)["second"][0])
    driver.wait()
    assert driver.returncode == 0, driver.describe()
    [run] = runs_by_cycle(cron)["first"]
    assert driver.stdout.splitlines() == [f"cycle first: {launched(run)}"]


def test_each_cycle_has_its_own_gate(make_cron: Callable[..., Cron]) -> None:
    cron = make_cron(ONE_HOUR, entries({"name": '"strict"', "gate.min_traces": "1000"},
                                       {"name": '"lenient"'}))

    result = cron.tick()

    assert result.returncode == 0, result.stderr
    runs = runs_by_cycle(cron)
    [strict], [lenient] = runs["strict"], runs["lenient"]
    assert (strict["state"], lenient["state"]) == ("SKIPPED", "LAUNCHED")
    assert cycle_lines(result)["strict"] == f"started {strict['run_id']}: SKIPPED: {strict['skip_reason']}"
    assert cron.sandbox.counts()["jobs"] == 1


# -- one cycle by name --------------------------------------------------------------------------


def test_tick_cycle_name_drives_only_that_cycle(two_projects: tuple[Cron, str]) -> None:
    cron, second = two_projects

    result = cron.cli.run(*cron.args, "--cycle", "second")

    assert result.returncode == 0, result.stderr
    [run] = runs_by_cycle(cron)["second"]
    assert result.stdout.splitlines() == [f"cycle second: {launched(run)}"]
    assert len(cron.runs()) == 1
    assert traces_by_project(cron.sandbox, DEFAULT_PROJECT_ID, second) == [0, len(FEW_PROMPTS)]


def test_an_unknown_cycle_name_is_exit_2_listing_the_names(two_projects: tuple[Cron, str]) -> None:
    cron, _ = two_projects

    result = cron.cli.run(*cron.args, "--cycle", "third")

    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        'cftrunner: error: no cycle named "third"; the cycles are "first", "second"']
    assert result.stdout == ""
    assert requests_sent(cron.sandbox) == 0


def test_start_with_several_cycles_needs_cycle_name(two_projects: tuple[Cron, str]) -> None:
    cron, _ = two_projects

    result = cron.cli.run("start", "--config", str(cron.config))

    assert result.returncode == 2
    [error] = error_lines(result.stderr)
    assert re.fullmatch(r'cftrunner: error: start drives one cycle and \S+ describes 2: pick one '
                        r'with --cycle NAME \("first", "second"\)', error), error
    assert not state_stored(cron.db_url)


def test_start_cycle_name_starts_that_cycle_which_tick_then_finds_done(
        two_projects: tuple[Cron, str]) -> None:
    cron, second = two_projects

    started = cron.cli.run("start", "--config", str(cron.config), "--cycle", "second")

    assert started.returncode == 0, started.stderr
    [run] = runs_by_cycle(cron)["second"]
    assert started.stdout.splitlines()[0] == run["run_id"]
    assert run["project_id"] == second
    ticked = cycle_lines(cron.tick())
    assert ticked["second"].startswith(f"nothing to do: the last cycle {run['run_id']} ")
    assert ticked["first"].startswith("started ")


# -- config ------------------------------------------------------------------------------------


def test_config_shows_the_first_cycle_and_a_line_per_cycle(two_projects: tuple[Cron, str]) -> None:
    cron, second = two_projects

    result = cron.cli.run("config", "--config", str(cron.config))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-3].startswith("# 2 [[cycles]]")
    assert lines[-2:] == ["cycle first: every key inherited",
                          f"cycle second: project_id = {second}"]
    assert any(line.startswith("project_id") and DEFAULT_PROJECT_ID in line for line in lines)
