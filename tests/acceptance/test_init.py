"""`cftrunner init` through real processes: the files it writes, what they hold, that it never
overwrites, its refusals, and a cycle run from the folder it sets up, as cron would run it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cftrunner.config.run_options import DEFAULT_TEMPLATE
from cftrunner.config.settings import KEY_BY_NAME
from cftrunner.prompts import load_prompts
from cftrunner.sandbox import DEFAULT_PROJECT_ID, Sandbox
from tests.conftest import MODEL, Cli, shown_status, traces_made

ROOT = Path(__file__).resolve().parents[2]
FILES = ["cftrunner.toml", "prompts.json", "holdout.json", "judge_template.txt", "crontab.txt",
         "cftrunner.service", "cftrunner.timer"]
CONTRIB = ["crontab.txt", "cftrunner.service", "cftrunner.timer"]
# The paths contrib/ holds where init fills in the folder's and the command's.
CONTRIB_FOLDER, CONTRIB_COMMAND = "/srv/cftrunner", "/usr/local/bin/cftrunner"
# The settings whose value init sets other than to the default: the files it writes beside them.
FILLED = {"prompts": "prompts.json", "judge_prompt": "judge_template.txt",
          "holdout_prompts": "holdout.json"}


def bare_env(**extra: str) -> dict[str, str]:
    """The environment without any cftrunner setting or API key, so only the file speaks."""
    return {**{k: v for k, v in os.environ.items()
               if not k.startswith(("CFTRUNNER_", "API_KEY", "PREMAI_API_KEY"))}, **extra}


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cftrunner", *args], cwd=cwd, env=bare_env(**env),
                          capture_output=True, text=True, timeout=120)


def command() -> str:
    """The command init writes into the crontab line and the service: the cftrunner script
    beside this Python, else this Python with -m cftrunner."""
    script = Path(os.path.abspath(sys.executable)).parent / "cftrunner"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return shlex.join([os.path.abspath(sys.executable), "-m", "cftrunner"])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def config_rows(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """`cftrunner config`'s rows: key -> (value, source)."""
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        if not line.startswith(("#", "cycle ")):
            match = re.fullmatch(r"(\S+)\s{2,}(.*?)\s{2,}\((.*)\)", line)
            assert match, line
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def uncommented(text: str) -> str:
    """The config file with its commented-out settings and tables ("# key = ...", "# [table]")
    set."""
    return re.sub(r"(?m)^# (?=[a-z_]+ = |\[)", "", text)


def flat_keys(document: dict[str, Any]) -> set[str]:
    keys = set()
    for name, value in document.items():
        if isinstance(value, dict):
            keys |= {f"{name}.{sub}" for sub in value}
        elif name != "cycles":
            keys.add(name)
    return keys


def test_init_writes_every_file_once_and_a_repeat_keeps_them_as_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "ops"  # neither exists yet
    first = run(tmp_path, "init", "new/ops")
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    lines = first.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:len(FILES)]] == [
        f"wrote {folder / name}" for name in FILES]
    assert lines[-1].startswith(f"next: set project_id and model_alias in {folder / 'cftrunner.toml'}")
    assert sorted(snapshot(folder)) == sorted(FILES)  # no temporary file left beside them

    (folder / "prompts.json").write_text('["my own prompt"]')
    (folder / "cftrunner.timer").unlink()
    before = snapshot(folder)
    again = run(tmp_path, "init", str(folder))
    assert again.returncode == 0, again.stderr
    assert f"wrote {folder / 'cftrunner.timer'}: " in again.stdout
    kept = [line for line in again.stdout.splitlines() if line.startswith("kept ")]
    assert kept == [f"kept {folder / name}: already there, left as it is"
                    for name in FILES if name != "cftrunner.timer"]
    after = snapshot(folder)
    assert {name: after[name] for name in before} == before  # the edited prompts too
    assert after["cftrunner.timer"] == (ROOT / "contrib" / "cftrunner.timer").read_bytes()

    third = run(folder, "init")  # the current folder, everything there: a no-op that says so
    assert third.returncode == 0, third.stderr
    assert third.stdout.splitlines()[-1] == f"nothing written: all 7 files were already in {folder}"
    assert not [line for line in third.stdout.splitlines() if line.startswith("wrote")]
    assert snapshot(folder) == after


def test_the_config_written_loads_with_every_setting_at_its_default(tmp_path: Path) -> None:
    folder = tmp_path / "ops"
    assert run(tmp_path, "init", str(folder)).returncode == 0
    config = folder / "cftrunner.toml"
    scaffolded = config_rows(run(tmp_path, "config", "--config", str(config)))
    empty = tmp_path / "empty"
    empty.mkdir()
    defaults = config_rows(run(empty, "config"))
    assert scaffolded.keys() == defaults.keys()
    for key, (value, source) in scaffolded.items():
        if key in FILLED:
            assert (value, source) == (str(folder / FILLED[key]), f"file {config}")
        elif key == "db":  # the default, next to the config file rather than the working folder
            assert defaults[key][0] == "sqlite:///state/cftrunner.db"
            assert (value, source) == (f"sqlite:///{folder}/state/cftrunner.db", f"file {config}")
        else:
            assert value == defaults[key][0], key
            assert source in ("default", f"file {config}"), key
    # What the files beside it hold: the built-in judge prompt, prompts cftrunner reads, and
    # held-out prompts none of which is a prompt of the prompts file.
    assert (folder / "judge_template.txt").read_text() == DEFAULT_TEMPLATE
    prompts, holdout = load_prompts(folder / "prompts.json"), load_prompts(folder / "holdout.json")
    assert prompts and holdout and not set(prompts) & set(holdout)


def test_every_setting_is_in_the_config_written_and_its_commented_examples_load(
        tmp_path: Path) -> None:
    """Each key of the settings table is in the file, set or commented out with an example; with
    every example set (the [[cycles]] entry too), the file still loads."""
    folder = tmp_path / "ops"
    assert run(tmp_path, "init", str(folder)).returncode == 0
    text = uncommented((folder / "cftrunner.toml").read_text())
    document = tomllib.loads(text)
    assert flat_keys(document) == set(KEY_BY_NAME)
    full = folder / "full.toml"
    full.write_text(text)
    result = run(tmp_path, "config", "--config", str(full), API_KEY="k" * 20)  # the key file unread
    rows = config_rows(result)
    assert rows["prompts_per_cycle"] == ("500", f"file {full}")
    assert rows["api.max_rps"] == ("10", f"file {full}")
    assert result.stdout.splitlines()[-1] == 'cycle support: project_id = 4a1e..., model_alias = ' \
        f'support-v2, prompts = {folder / "support.json"}, gate.min_traces = 1000'


@pytest.mark.parametrize("case", ["a file", "under a file", "a folder in a file's place",
                                  "a line break"])
def test_a_folder_init_cannot_write_in_is_one_error_line_and_nothing_written(
        tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    target = {"a file": blocker, "under a file": blocker / "ops",
              "a folder in a file's place": tmp_path / "ops", "a line break": tmp_path / "a\nb"}[case]
    if case == "a folder in a file's place":
        (target / "cftrunner.service").mkdir(parents=True)
    before = snapshot(tmp_path)
    folders = sorted(p for p in tmp_path.rglob("*") if p.is_dir())
    result = run(tmp_path, "init", str(target))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("cftrunner: error: ")
    assert {"a file": "is a file, not a folder", "under a file": f"{blocker} is a file",
            "a folder in a file's place": "cftrunner.service is a folder",
            "a line break": "has a line break"}[case] in result.stderr
    assert snapshot(tmp_path) == before
    assert sorted(p for p in tmp_path.rglob("*") if p.is_dir()) == folders


@pytest.mark.parametrize("name", CONTRIB)
def test_the_unit_files_and_crontab_line_are_contrib_s_with_the_folder_s_paths(
        tmp_path: Path, name: str) -> None:
    folder = tmp_path / "ops"
    assert run(tmp_path, "init", str(folder)).returncode == 0
    written = (folder / name).read_text()
    assert str(folder) in written or name == "cftrunner.timer"
    generic = written.replace(command(), CONTRIB_COMMAND).replace(str(folder), CONTRIB_FOLDER)
    assert generic == (ROOT / "contrib" / name).read_text()


@pytest.mark.parametrize("folder_name", ["ops", "my 50%Z $HOME \"ops\""])
def test_systemd_analyze_verify_accepts_the_units_init_writes(tmp_path: Path,
                                                                folder_name: str) -> None:
    """The units of a folder whose path needs quoting and escaping too (%Z unescaped is a
    specifier systemd does not know: an error). contrib/'s are the same (the test above) but name
    /usr/local/bin/cftrunner, which verify wants to exist."""
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    folder = tmp_path / folder_name
    assert run(tmp_path, "init", str(folder)).returncode == 0
    result = subprocess.run([verify, "verify", str(folder / "cftrunner.service"),
                             str(folder / "cftrunner.timer")], capture_output=True, text=True,
                            timeout=120)
    # A warning (an unknown key, a bad value ignored) is a failure too.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def cron_command(crontab: Path) -> str:
    """The command of the crontab file's one entry, as cron hands it to /bin/sh: after the five
    time fields, with each escaped % unescaped."""
    entries = [line for line in crontab.read_text().splitlines() if line and not line.startswith("#")]
    assert len(entries) == 1
    fields = entries[0].split(None, 5)
    assert fields[:5] == ["*/10", "*", "*", "*", "*"]
    return fields[5].replace("\\%", "%")


def test_a_folder_init_set_up_runs_its_cycle_from_the_crontab_line(
        tmp_path: Path, cli: Cli, sandbox: Sandbox) -> None:
    """tick --dry-run with the project and model on the command line, as the README says; then,
    with them in the file, the crontab line's command through /bin/sh launches a cycle of the
    sample prompts, and the next tick has nothing to do. The state database and the sandbox are
    the environment's (CFTRUNNER_DB, CFTRUNNER_BASE_URL, API_KEY)."""
    folder = tmp_path / "my ops"
    assert cli.run("init", str(folder)).returncode == 0
    config = folder / "cftrunner.toml"
    dry = cli.run("tick", "--dry-run", "--config", str(config), "--project-id", DEFAULT_PROJECT_ID,
                  "--model-alias", MODEL)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"would start a run of 8 from {folder / 'prompts.json'} ")

    text = config.read_text()
    for key, value in (("project_id", DEFAULT_PROJECT_ID), ("model_alias", MODEL)):
        text, count = re.subn(rf'(?m)^# {key} = "[^"]*"', f'{key} = "{value}"', text, count=1)
        assert count == 1
    config.write_text(text)
    line = cron_command(folder / "crontab.txt")
    for _ in ("launch", "nothing to do"):
        result = subprocess.run(["/bin/sh", "-c", line], env=cli.env, cwd=cli.tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (folder / "cftrunner.log").read_text()
    log = (folder / "cftrunner.log").read_text()
    assert re.search(r"^run \S+: LAUNCHED job ", log, re.MULTILINE), log
    assert re.search(r"^nothing to do: ", log, re.MULTILINE), log
    [run_status] = shown_status(cli.env["CFTRUNNER_DB"])
    assert run_status["state"] == "LAUNCHED"
    assert traces_made(sandbox) == 8
    assert sandbox.counts()["jobs"] == 1
