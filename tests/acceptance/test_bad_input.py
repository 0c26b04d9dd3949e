"""Input refused before anything is stored or sent, alike on both databases: prompts no database
can hold as text, and run ids that are not plain names. Real processes, real exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cftrunner.sandbox import Sandbox
from tests.acceptance.test_cli import one_error_line, stored_runs
from tests.conftest import Cli, write_prompts

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
