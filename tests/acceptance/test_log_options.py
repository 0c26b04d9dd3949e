"""--quiet, --verbose, --log-format and --log-file (also as settings), by real processes: what each
writes where, the key kept out of the log file, and conflicting flags refused before anything is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cftrunner.sandbox import DEFAULT_API_KEY, FaultRule, Sandbox
from tests.conftest import Cli, state_stored
from tests.terminal import Terminal, logged


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


REFUSED = [
    (("--quiet", "--verbose"), "--quiet and --verbose cannot be used together"),
    (("-q", "--log-level", "info"), "--quiet and --log-level cannot be used together"),
    (("--verbose", "--log-level", "debug"), "--verbose and --log-level cannot be used together"),
    (("--quiet", "--progress"), "--quiet and --progress cannot be used together"),
    (("--quiet", "--verbose", "--log-level", "error"),
     "--quiet, --verbose and --log-level cannot be used together"),
]


@pytest.mark.parametrize(("flags", "said"), REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_conflicting_log_flags_are_one_usage_error_before_anything_is_done(
        cli: Cli, sandbox: Sandbox, flags: tuple[str, ...], said: str) -> None:
    result = cli.run(*cli.start_args("refused", *flags))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"cftrunner: error: {said}"]
    assert not state_stored(cli.env["CFTRUNNER_DB"]) and sum(sandbox.counts()["requests"].values()) == 0


@pytest.mark.parametrize("args", [
    ("--quiet", "status", "--verbose"),  # before the command and after it
    ("tick", "-v", "-q"),
    ("resume", "some-run", "--quiet", "--log-level", "error"),
    ("demo", "--quiet", "--verbose"),
])
def test_every_command_that_logs_refuses_them_alike(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli.run(*args)
    assert result.returncode == 2 and result.stderr.startswith("cftrunner: error: --")
    assert "cannot be used together" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not state_stored(cli.env["CFTRUNNER_DB"]) and list(cli.tmp_path.iterdir()) == [cli.prompts]


def test_a_log_file_that_cannot_be_written_is_refused_before_the_run(cli: Cli) -> None:
    result = cli.run(*cli.start_args("unlogged", "--log-file", str(cli.tmp_path)))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"cftrunner: error: cannot write the log file {cli.tmp_path}: Is a directory"]
    assert not state_stored(cli.env["CFTRUNNER_DB"])


def test_quiet_leaves_warnings_and_errors_and_the_same_output(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", status=503, times=2))
    result = cli.run(*cli.start_args("hushed", "--quiet"))
    assert result.returncode == 0
    logged_events = events(result.stderr)
    assert {e["level"] for e in logged_events} == {"warning"}
    assert [e["event"] for e in logged_events].count("request_retry") == 2
    assert result.stdout.splitlines()[0] == "hushed"
    assert result.stdout.splitlines()[1].startswith("run hushed: LAUNCHED job ")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_quiet_on_a_terminal_draws_no_display(cli: Cli) -> None:
    code, _, lines = Terminal(cli.command(*cli.start_args("still", "--quiet")), cli.tmp_path,
                              cli.env).finish()
    assert code == 0 and not [line for line in lines if line.startswith(("generate ", "run still"))]
    assert {level for level, _ in logged(lines)} <= {"warning", "error"}


def test_verbose_logs_debug_events(cli: Cli) -> None:
    result = cli.run(*cli.start_args("chatty", "-v"))
    assert result.returncode == 0
    assert {"api_request", "item_transitioned"} <= {e["event"] for e in events(result.stderr)}


def test_the_log_format_is_chosen_whatever_the_stream(cli: Cli) -> None:
    text = cli.run(*cli.start_args("readable", "--log-format", "console"))
    assert text.returncode == 0 and "run_transitioned" in text.stderr
    assert not any(line.startswith("{") for line in text.stderr.splitlines())
    if hasattr(os, "openpty"):
        code, _, lines = Terminal(cli.command(*cli.start_args(
            "machine", "--log-format", "json", "--no-progress")), cli.tmp_path, cli.env).finish()
        shown = [json.loads(line) for line in lines if line.startswith("{")]
        assert code == 0 and "run_transitioned" in {e["event"] for e in shown}


def test_the_log_file_and_format_are_settings_of_the_environment_and_the_config_file(
        cli: Cli) -> None:
    from_env = cli.run(*cli.start_args("env-logged"), env={"CFTRUNNER_LOG_FILE": "env.log"})
    assert from_env.returncode == 0
    assert {e["level"] for e in events(from_env.stderr)} <= {"warning", "error"}
    assert "effect_done" in (cli.tmp_path / "env.log").read_text()
    folder = cli.tmp_path / "etc"
    (folder / "logs").mkdir(parents=True)
    (folder / "cftrunner.toml").write_text('log_file = "logs/run.log"\nlog_format = "console"\n')
    from_file = cli.run(*cli.start_args("file-logged", "--config", str(folder / "cftrunner.toml")))
    assert from_file.returncode == 0, from_file.stderr
    written = (folder / "logs" / "run.log").read_text()
    assert "effect_done" in written and not written.startswith("{")  # relative to the file's folder
    shown = cli.run("config", "--config", str(folder / "cftrunner.toml")).stdout
    assert f"{folder / 'logs' / 'run.log'}" in shown


def test_the_api_key_never_reaches_the_log_file(cli: Cli) -> None:
    # A key pasted as the model alias: the check before the run warns of a model not listed.
    args = [DEFAULT_API_KEY if a == cli.start_args("x")[4] else a for a in cli.start_args("keyed")]
    result = cli.run(*args, "--verbose", "--log-file", "run.log")
    written = (cli.tmp_path / "run.log").read_text()
    assert result.returncode == 0 and "[redacted]" in written and "api_request" in written
    assert DEFAULT_API_KEY not in written + result.stderr + result.stdout


def test_help_names_the_log_options() -> None:
    shown = subprocess.run([sys.executable, "-m", "cftrunner", "start", "--help"],
                           capture_output=True, text=True, check=True).stdout
    for flag in ("--quiet", "--verbose", "--log-file", "--log-format", "--log-level"):
        assert flag in shown
