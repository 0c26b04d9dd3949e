"""The command-line contract, driven as users and cron drive it: real processes, real exit codes."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cftrunner.cli import cli as click_group
from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, FaultRule, Sandbox
from cftrunner.store import Store
from tests.conftest import JUDGE, MODEL, PROMPTS, Cli, assert_exactly_once, state_stored


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("cftrunner: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def stored_runs(cli: Cli) -> list[dict[str, object]]:
    """Every run `status --json` shows; none where nothing made the state database yet."""
    if not state_stored(cli.env["CFTRUNNER_DB"]):
        return []
    result = cli.run("status", "--json")
    assert result.returncode == 0, result.stderr
    runs: list[dict[str, object]] = json.loads(result.stdout)
    return runs


def test_start_prints_the_run_id_first_and_exits_0_when_launched(
        cli: Cli, sandbox: Sandbox) -> None:
    result = cli.run(*cli.start_args("first-run"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "first-run"
    assert lines[-1].startswith("run first-run: LAUNCHED job ")
    assert_exactly_once(sandbox, len(PROMPTS))


def test_start_without_run_id_makes_one_up(cli: Cli) -> None:
    args = [a for a in cli.start_args("x") if a not in ("--run-id", "x")]
    result = cli.run(*args)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.splitlines()[0]
    assert [r["run_id"] for r in stored_runs(cli)] == [run_id]


def test_starting_an_existing_run_id_points_to_resume(cli: Cli, sandbox: Sandbox) -> None:
    assert cli.run(*cli.start_args("dup")).returncode == 0
    again = cli.run(*cli.start_args("dup"))
    assert again.returncode == 2
    assert "cftrunner resume dup" in one_error_line(again)
    assert sandbox.counts()["jobs"] == 1


def test_resuming_a_launched_run_shows_it_sends_nothing_and_exits_0(
        cli: Cli, sandbox: Sandbox) -> None:
    assert cli.run(*cli.start_args("done")).returncode == 0
    before = sandbox.counts()["requests"]
    result = cli.run("resume", "done")
    assert result.returncode == 0 and "LAUNCHED" in result.stdout
    assert sandbox.counts()["requests"] == before


def test_resuming_an_unknown_run_is_bad_input_naming_the_database(cli: Cli) -> None:
    store = Store(cli.env["CFTRUNNER_DB"])
    where = store.where
    store.close()
    result = cli.run("resume", "nope")
    assert result.returncode == 2
    assert one_error_line(result) == f"cftrunner: error: no run 'nope' in the state database {where}"


def test_a_failed_run_exits_1_with_its_reason(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", status=400, judge=False))
    result = cli.run(*cli.start_args("doomed"))
    assert result.returncode == 1
    assert "every item failed" in one_error_line(result)
    assert cli.run("resume", "doomed").returncode == 1


def test_a_run_that_cannot_proceed_exits_3_and_resume_finishes_it(
        cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="finetune_create", status=503))
    result = cli.run(*cli.start_args("stuck"), env={"CFTRUNNER_MAX_ATTEMPTS": "2"})
    assert result.returncode == 3
    assert "resume" in one_error_line(result)
    [run] = stored_runs(cli)
    assert run["state"] == "RECS_READY" and "503" in str(run["last_error"])
    sandbox.clear_faults()
    assert cli.run("resume", "stuck").returncode == 0
    assert_exactly_once(sandbox, len(PROMPTS))


def test_status_json_carries_the_documented_fields(cli: Cli) -> None:
    assert cli.run(*cli.start_args("shown")).returncode == 0
    result = cli.run("status", "shown", "--json")
    data = json.loads(result.stdout)
    assert data["run_id"] == "shown" and data["state"] == "LAUNCHED"
    assert isinstance(data["job_id"], str) and data["last_error"] is None
    assert data["items"]["total"] == len(PROMPTS) and data["items"]["ADDED"] == len(PROMPTS)


def test_status_table_lists_every_run(cli: Cli, sandbox: Sandbox) -> None:
    assert cli.run(*cli.start_args("one")).returncode == 0
    sandbox.add_fault(FaultRule(route="chat", status=400, judge=False))
    assert cli.run(*cli.start_args("two")).returncode == 1
    table = cli.run("status").stdout.splitlines()
    assert table[0].split()[:3] == ["RUN", "ID", "STATE"]
    rows = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert rows == {"one": "LAUNCHED", "two": "FAILED"}


def test_status_of_an_empty_database_says_so(cli: Cli) -> None:
    Store(cli.env["CFTRUNNER_DB"]).close()
    result = cli.run("status")
    assert result.returncode == 0 and "no runs yet" in result.stdout


READ_ONLY = [("status",), ("status", "--json"), ("status", "r1"), ("show", "r1", "0"),
             ("report", "r1"), ("report", "--trend", "--no-html"), ("resume", "r1"),
             ("cancel", "r1"), ("settle", "r1", "0", "--not-happened")]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("args", READ_ONLY, ids=[" ".join(a) for a in READ_ONLY])
def test_a_command_on_a_missing_state_file_names_it_and_creates_none(
        cli: Cli, tmp_path: Path, args: tuple[str, ...]) -> None:
    missing = tmp_path / "elsewhere" / "typo.db"
    missing.parent.mkdir()
    result = cli.run("--db", f"sqlite:///{missing}", *args)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result) == (
        f"cftrunner: error: no state database at {missing}: nothing has run with this database "
        "yet (see --db, CFTRUNNER_DB or db in the config file)")
    assert list(missing.parent.iterdir()) == []


BAD_PROMPTS = {
    "missing": None,
    "empty": "",
    "not_json": "{test_prompts: [",
    "wrong_shape": json.dumps({"prompts": ["a"]}),
    "empty_list": json.dumps({"test_prompts": []}),
    "non_string": json.dumps({"test_prompts": ["a", 3]}),
    "duplicate": json.dumps({"test_prompts": ["a", "b", "a"]}),
}


@pytest.mark.parametrize("case", BAD_PROMPTS)
def test_a_bad_prompts_file_is_one_line_exit_2_and_no_run(cli: Cli, tmp_path: Path,
                                                         sandbox: Sandbox, case: str) -> None:
    path = tmp_path / f"{case}.json"
    if BAD_PROMPTS[case] is not None:
        path.write_text(BAD_PROMPTS[case] or "")
    args = cli.start_args("bad")
    args[args.index("--prompts") + 1] = str(path)
    result = cli.run(*args)
    assert result.returncode == 2
    assert str(path) in one_error_line(result)
    assert result.stdout == ""
    assert stored_runs(cli) == []
    assert sandbox.counts()["requests"] == {}


def test_a_missing_api_key_is_exit_2_and_no_run(cli: Cli, sandbox: Sandbox) -> None:
    result = cli.run(*cli.start_args("keyless"), env={"API_KEY": ""})
    assert result.returncode == 2
    assert "API_KEY" in one_error_line(result)
    assert stored_runs(cli) == []


def test_premai_api_key_is_accepted(cli: Cli) -> None:
    result = cli.run(*cli.start_args("alt-key"), env={"API_KEY": "", "PREMAI_API_KEY": DEFAULT_API_KEY})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args", [
    ["start", "--project-id", DEFAULT_PROJECT_ID, "--model-alias", MODEL],
    ["start", "--project-id", DEFAULT_PROJECT_ID, "--model-alias", MODEL, "--prompts", "p.json",
     "--split-percentage", "100"],
    ["frobnicate"],
    ["resume"],
])
def test_usage_errors_exit_2_with_one_line(cli: Cli, args: list[str]) -> None:
    result = cli.run(*args)
    assert result.returncode == 2
    one_error_line(result)


def test_an_invalid_run_id_is_refused(cli: Cli) -> None:
    result = cli.run(*cli.start_args("has space"))
    assert result.returncode == 2 and "run id" in one_error_line(result)
    assert stored_runs(cli) == []


def test_the_api_key_never_appears_in_any_output(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", status=503, times=2))
    outputs = [cli.run(*cli.start_args("secret")), cli.run("status", "secret"),
               cli.run("status", "--json"), cli.run("resume", "secret")]
    for result in outputs:
        assert DEFAULT_API_KEY not in result.stdout + result.stderr


def test_logs_are_json_lines_off_a_terminal(cli: Cli) -> None:
    result = cli.run(*cli.start_args("logged"))
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"run_created", "run_transitioned", "effect_done"} <= {e["event"] for e in events}
    assert all(e.get("run_id") == "logged" for e in events if e["event"] == "effect_done")


def test_demo_runs_a_whole_cycle_with_no_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("CFTRUNNER_", "API_KEY", "PREMAI_API_KEY"))}
    result = subprocess.run([sys.executable, "-m", "cftrunner", "demo"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "LAUNCHED" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["state"]  # kept: see test_demo.py


def test_every_command_is_documented_with_an_example() -> None:
    for name, command in click_group.commands.items():
        assert command.help and "Example: cftrunner " + name in command.help, name


def test_the_console_script_is_installed() -> None:
    assert shutil.which("cftrunner") is not None


def test_the_sandbox_command_serves_the_api(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cftrunner", "sandbox", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[3]
        assert DEFAULT_PROJECT_ID in line
        import requests
        project = requests.get(f"{url}/api/v1/public/projects/{DEFAULT_PROJECT_ID}",
                               headers={"Authorization": "Bearer any"}, timeout=5)
        assert project.status_code == 200
        assert requests.get(f"{url}/_sandbox/counts", timeout=5).json()["traces"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_sandbox_command_can_cut_judge_answers_and_refuse_structured_output() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cftrunner", "sandbox", "--port", "0",
                             "--judge-truncated", "1", "--no-structured-output"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        import requests
        assert requests.get(f"{url}/_sandbox/structured-output", timeout=5).json() == {
            "enabled": False}

        def judge(**options: object) -> requests.Response:
            body = {"model": JUDGE, "messages": [{"role": "user", "content": "judge this"}],
                    **options}
            return requests.post(f"{url}/api/v1/chat/completions", json=body, timeout=5,
                                 headers={"Authorization": "Bearer any"})

        assert judge(response_format={"type": "json_schema", "json_schema": {
            "name": "judgment", "schema": {"type": "object"}}}).status_code == 400
        [choice] = judge().json()["choices"]
        assert choice["finish_reason"] == "length"
        with pytest.raises(ValueError):
            json.loads(choice["message"]["content"])
        answered = requests.post(f"{url}/api/v1/chat/completions", timeout=5,
                                 headers={"Authorization": "Bearer any"},
                                 json={"model": MODEL, "messages": [{"role": "user",
                                                                     "content": "hi"}]})
        assert answered.json()["choices"][0]["finish_reason"] == "stop"  # not a judge call
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_connection_options_work_before_the_command_too(cli: Cli, make_db_url: Callable[..., str],
                                                        sandbox: Sandbox) -> None:
    other_db = make_db_url("other")
    assert cli.run("--db", other_db, *cli.start_args("elsewhere")).returncode == 0
    assert stored_runs(cli) == []
    listed = cli.run("--db", other_db, "status", "--json")
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["elsewhere"]
    Store(cli.env["CFTRUNNER_DB"]).close()
    assert cli.run("--db", other_db, "status", "--db", cli.env["CFTRUNNER_DB"]).stdout.startswith(
        "no runs yet")


def test_a_closed_stderr_does_not_stop_the_run(cli: Cli, sandbox: Sandbox) -> None:
    """Cron may close the log pipe; a log line that cannot be written is dropped, not fatal."""
    proc = subprocess.Popen(cli.command(*cli.start_args("no-logs"), "--log-level", "debug"),
                            env=cli.env, cwd=cli.tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    proc.stderr.close()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert out.splitlines()[-1].startswith("run no-logs: LAUNCHED")
    assert_exactly_once(sandbox, len(PROMPTS))


def test_status_shows_time_in_each_state_and_the_lease(cli: Cli) -> None:
    assert cli.run(*cli.start_args("timed")).returncode == 0
    data = json.loads(cli.run("status", "timed", "--json").stdout)
    assert set(data["state_seconds"]) == {"CREATED", "GENERATED", "JUDGED", "TRACED", "ADDED",
                                          "SNAPSHOT", "RECS_READY"}
    assert data["lease"] is None and data["cancel_requested"] is False
    detail = cli.run("status", "timed").stdout
    assert "owner      none" in detail and "time       CREATED" in detail


def test_config_shows_each_setting_its_source_and_never_the_key(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "cftrunner.toml").write_text('model_alias = "from-file"\n[retry]\nmax_attempts = 9\n')
    result = cli.run("config", "--split-percentage", "70",
                     env={"API_KEY": "sk-very-secret-key-1234"})
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line[:1] != "#"}
    assert rows["model_alias"].split()[1] == "from-file" and "file" in rows["model_alias"]
    assert "command line" in rows["split_percentage"]
    assert "environment CFTRUNNER_DB" in rows["db"]
    assert rows["retry.max_attempts"].split()[1] == "9"
    assert "sk-very-secret" not in result.stdout and "****1234" in rows["api_key"]


def test_concurrency_and_max_rps_come_from_the_command_line_over_the_file(cli: Cli,
                                                                         tmp_path: Path) -> None:
    (tmp_path / "cftrunner.toml").write_text("[api]\nconcurrency = 4\nmax_rps = 9\n")
    result = cli.run("config", "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line[:1] != "#"}
    assert rows["api.concurrency"].split()[1] == "3" and "command line" in rows["api.concurrency"]
    assert rows["api.max_rps"].split()[1] == "9" and "file" in rows["api.max_rps"]
    result = cli.run("resume", "no-such-run", "--max-rps", "0")
    assert result.returncode == 2 and "--max-rps" in result.stderr


def test_a_config_file_with_an_unknown_key_is_one_line_naming_it(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "cftrunner.toml").write_text("[retry]\nmax_attempt = 3\n")
    result = cli.run(*cli.start_args("cfg"))
    assert result.returncode == 2
    assert "retry.max_attempt" in one_error_line(result)
    (tmp_path / "cftrunner.toml").unlink()
    assert stored_runs(cli) == []


def test_log_events_carry_the_documented_fields(cli: Cli, sandbox: Sandbox) -> None:
    """Transitions, items, retries, reconciliations and requests are facts with fields."""
    sandbox.add_fault(FaultRule(route="trace_create", status=503, after_action=True, times=1))
    result = cli.run(*cli.start_args("fields"), "--log-level", "debug")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    by_kind: dict[str, list[dict[str, object]]] = {}
    for event in events:
        by_kind.setdefault(str(event["event"]), []).append(event)
    assert all(e.get("run_id") == "fields" for e in events)
    assert {"state", "from_state"} <= set(by_kind["run_transitioned"][0])
    assert {"item", "stage"} <= set(by_kind["item_transitioned"][0])
    assert {"attempt", "status_code", "delay"} <= set(by_kind["request_retry"][0])
    assert by_kind["request_retry"][0]["status_code"] == 503
    assert by_kind["reconciled"][0]["verdict"] == "happened"
    request = by_kind["api_request"][0]
    assert {"method", "path", "status_code", "elapsed_ms"} <= set(request)
    assert isinstance(request["elapsed_ms"], int)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(cli: Cli, *args: str, timeout: float = 60) -> tuple[int, str, list[str]]:
    """Run a command with stderr on a pseudo-terminal, as at a shell: its exit status, its
    standard output, and the lines the terminal received, without colours and cursor moves."""
    primary, secondary = os.openpty()
    proc = subprocess.Popen(cli.command(*args), cwd=cli.tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=secondary, text=True,
                            env={**cli.env, "TERM": "xterm-256color", "COLUMNS": "120"})
    os.close(secondary)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([primary], [], [], 0.1)[0]:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                received += chunk
    finally:
        os.close(primary)
    out, _ = proc.communicate(timeout=timeout)
    text = ANSI.sub("", received.decode(errors="replace"))
    return proc.returncode, out, [line.rstrip() for line in re.split(r"\r\n|\r|\n", text)
                                  if line.strip()]


def stage_lines(lines: list[str]) -> list[list[str]]:
    """The words of each stage line drawn, its bar left out."""
    return [re.sub(r"[━╸╺]", " ", line).split() for line in lines
            if re.match(r"(generate|judge|trace|add) ", line)]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_on_a_terminal_each_stage_shows_its_items_done(cli: Cli) -> None:
    code, out, lines = run_on_a_terminal(cli, *cli.start_args("watched"))
    assert code == 0 and out.splitlines()[0] == "watched"
    final = stage_lines(lines)[-4:]
    assert [words[:4] for words in final] == [[name, f"{len(PROMPTS)}/{len(PROMPTS)}", "0", "failed"]
                                              for name in ("generate", "judge", "trace", "add")]
    assert [words[-1] for words in final] == ["done"] * 4
    assert any(line.startswith("run watched  LAUNCHED") for line in lines)
    assert any("run_transitioned" in line for line in lines)  # log lines still show, as text


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_no_progress_on_a_terminal_leaves_only_the_log_lines(cli: Cli) -> None:
    code, _, lines = run_on_a_terminal(cli, *cli.start_args("unwatched", "--no-progress"))
    assert code == 0
    assert stage_lines(lines) == [] and any("run_transitioned" in line for line in lines)


def test_off_a_terminal_there_is_no_progress_display_only_json_log_lines(cli: Cli) -> None:
    result = cli.run(*cli.start_args("piped"))
    assert result.returncode == 0
    assert [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert f"{len(PROMPTS)}/{len(PROMPTS)}" not in result.stderr and "\x1b[" not in result.stderr
