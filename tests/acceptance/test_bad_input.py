"""Input refused before anything is stored or sent, alike on both databases: prompts no database
can hold as text, an API URL naming no host, and run ids that are not plain names. Real
processes, real exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cftrunner.sandbox import Sandbox
from tests.acceptance.test_cli import one_error_line, stored_runs
from tests.conftest import Cli, state_stored, write_prompts

# A prompts file's text, as written (JSON escapes undecoded), and how the error line names it.
UNSTORABLE = {
    "nul-json": ('{"test_prompts": ["a", "b\\u0000"]}', "prompt 1 holds a NUL character"),
    "nul-jsonl": ('"a"\n{"prompt": "\\u0000b"}\n', "line 2: prompt 1 holds a NUL character"),
    "surrogate-json": ('["a", "b", "\\ud800"]', "prompt 2 holds a lone surrogate (\\ud800"),
    "surrogate-jsonl": ('"a"\n\n"\\udc00 b"\n', "line 3: prompt 1 holds a lone surrogate (\\udc00"),
}


@pytest.mark.parametrize("case", UNSTORABLE)
def test_a_prompt_no_database_stores_as_text_is_exit_2_naming_it_and_no_run(
        cli: Cli, sandbox: Sandbox, tmp_path: Path, case: str) -> None:
    text, named = UNSTORABLE[case]
    path = tmp_path / ("prompts.jsonl" if case.endswith("jsonl") else "prompts.json")
    path.write_text(text, encoding="ascii")
    args = cli.start_args("unstorable")
    args[args.index("--prompts") + 1] = str(path)
    result = cli.run(*args)
    assert result.returncode == 2, result.stderr
    assert f"{path}: {named}" in one_error_line(result)
    assert stored_runs(cli) == []
    assert sandbox.counts()["requests"] == {}


def test_held_out_prompts_with_a_nul_are_exit_2_naming_them_and_no_run(cli: Cli,
                                                                       tmp_path: Path) -> None:
    (tmp_path / "cftrunner.toml").write_text('promote = true\nholdout_prompts = "holdout.json"\n')
    write_prompts(tmp_path / "holdout.json", ["held out", "held\u0000out"])
    result = cli.run(*cli.start_args("bad-holdout"))
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path / 'holdout.json'}: prompt 1 holds a NUL character" in one_error_line(result)
    (tmp_path / "cftrunner.toml").unlink()
    assert stored_runs(cli) == []


@pytest.mark.parametrize("url", ["http://:80", "https://studio.premai.io:https"])
def test_a_base_url_naming_no_host_or_port_is_exit_2_before_anything_is_stored(
        cli: Cli, db_url: str, url: str) -> None:
    """No request could be sent there: refused as bad input, not an internal error at the first
    request."""
    result = cli.run(*cli.start_args("no-host", "--base-url", url))
    assert result.returncode == 2, result.stderr
    assert one_error_line(result) == ("cftrunner: error: --base-url must be a URL starting with "
                                      f'http:// or https://, not "{url}"')
    assert not state_stored(db_url)


NOT_PLAIN = ["..", ".hidden", "\u0661\u0662\u0663", "caf\u00e9", "a/b"]


@pytest.mark.parametrize("run_id", NOT_PLAIN)
def test_start_refuses_a_run_id_that_is_not_a_plain_ascii_name(cli: Cli, sandbox: Sandbox,
                                                               db_url: str, run_id: str) -> None:
    result = cli.run(*cli.start_args(run_id))
    assert result.returncode == 2, result.stderr
    assert one_error_line(result) == (f"cftrunner: error: run id {run_id!r} must be 1 to 100 "
                                      "ASCII letters, digits, '-', '_' or '.', not starting "
                                      "with '.'")
    assert not state_stored(db_url)
    assert sandbox.counts()["requests"] == {}


@pytest.mark.parametrize("args", [["resume", ".."], ["cancel", ".."], ["status", ".."],
                                  ["status", "--json", ".."], ["show", "..", "0"],
                                  ["report", ".."]])
def test_every_command_refuses_a_run_id_that_is_not_a_plain_ascii_name(cli: Cli, db_url: str,
                                                                       args: list[str]) -> None:
    result = cli.run(*args)
    assert result.returncode == 2, result.stderr
    assert "run id '..' must be 1 to 100 ASCII letters" in one_error_line(result)
    assert not state_stored(db_url)


def test_a_refused_run_id_creates_not_even_the_default_state_folder(cli: Cli,
                                                                    tmp_path: Path) -> None:
    result = cli.run("status", "\u0661\u0662\u0663", env={"CFTRUNNER_DB": ""})
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "state").exists()
