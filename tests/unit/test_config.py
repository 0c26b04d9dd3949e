"""The config file and settings resolution: keys, precedence, paths, the API key, and every refusal."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from cftrunner import logs
from cftrunner.config.cycle import Cycle
from cftrunner.config.describe import describe, describe_cycles
from cftrunner.config.resolution import Resolved, resolve, select
from cftrunner.config.run_options import DEFAULT_TEMPLATE, GateConfig
from cftrunner.config.settings import DEFAULT_DB, KEY_BY_NAME, LOG_LEVELS, Settings
from cftrunner.config.values import parse_duration
from cftrunner.exceptions import InputError
from cftrunner.judge import DEFAULT_JUDGE_MODEL
from cftrunner.prompt_source import Rules
from cftrunner.retry import RetryPolicy

KEY = "sk-live-0123456789abcdefWXYZ"
WriteConfig = Callable[..., Path]
Resolve = Callable[..., Resolved]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write TOML text (dedented) to cftrunner.toml, or to `name` under tmp_path, and return its path."""

    def write(text: str, name: str = "cftrunner.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run(tmp_path: Path) -> Resolve:
    """resolve() in tmp_path as the working directory, with an empty environment unless given one."""

    def call(cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Resolved:
        return resolve(cli or {}, env or {}, cwd=tmp_path)

    return call


def refusal(run: Resolve, cli: Mapping[str, Any] | None = None,
            env: Mapping[str, str] | None = None) -> str:
    """The message of the InputError that resolve raises; always one line."""
    with pytest.raises(InputError) as raised:
        run(cli, env)
    assert "\n" not in raised.value.message
    return raised.value.message


# each section and key


def test_no_config_file_gives_the_defaults(run: Resolve) -> None:
    resolved = run()
    assert resolved.config_path is None
    assert resolved.settings == Settings(db_url=DEFAULT_DB)
    assert resolved.cycle == Cycle(judge_model=DEFAULT_JUDGE_MODEL, split_percentage=80,
                                          interval=86400.0, failed_retry_interval=3600.0)
    assert resolved.cycle.project_id is None and resolved.cycle.prompts is None
    assert resolved.log_level == "info"
    assert set(resolved.sources.values()) == {"default"}


def test_reads_the_top_level_keys(run: Resolve, write_config: WriteConfig, tmp_path: Path) -> None:
    write_config("""
        project_id = "proj-1"
        model_alias = "my-model-v3"
        prompts = "prompts.json"
        judge_model = "gpt-judge"
        split_percentage = 70
        interval = "12h"
        failed_retry_interval = "30m"
        base_url = "http://127.0.0.1:8765/"
        log_level = "debug"
    """)
    resolved = run()
    assert resolved.cycle == Cycle(
        project_id="proj-1", model_alias="my-model-v3", prompts=str(tmp_path / "prompts.json"),
        judge_model="gpt-judge", split_percentage=70, interval=43200.0, failed_retry_interval=1800.0)
    assert resolved.settings.base_url == "http://127.0.0.1:8765"
    assert resolved.log_level == "debug"


def test_reads_the_retry_section(run: Resolve, write_config: WriteConfig) -> None:
    write_config("""
        [retry]
        max_attempts = 9
        base_delay = 0.25
        max_delay = 12
        max_retry_after = 60
    """)
    assert run().settings.retry == RetryPolicy(max_attempts=9, base_delay=0.25, max_delay=12.0,
                                               max_retry_after=60.0)


def test_reads_the_timeouts_section_into_the_settings_fields(run: Resolve,
                                                             write_config: WriteConfig) -> None:
    write_config("""
        [timeouts]
        connect = 1
        read = 2
        poll_interval = 3
        processing = 4
        recommendations = 5
        reconcile_settle = 0
        lease = 7
        shutdown_grace = 8
        poll_first = 0.5
        poll_factor = 1.5
    """)
    settings = run().settings
    assert (settings.connect_timeout, settings.read_timeout, settings.poll_interval,
            settings.processing_timeout, settings.recs_timeout, settings.reconcile_settle,
            settings.lease_seconds, settings.shutdown_grace, settings.poll_first,
            settings.poll_factor) == (1, 2, 3, 4, 5, 0, 7, 8, 0.5, 1.5)


def test_reads_the_judge_section(run: Resolve, write_config: WriteConfig) -> None:
    write_config("[judge]\nattempts = 5\ntemperature = 0\nmax_tokens = 300\n"
                 "structured_output = false\n")
    resolved = run()
    assert resolved.settings.judge_attempts == 5
    judge = resolved.cycle.judge()
    assert (judge.temperature, judge.max_tokens, judge.structured_output) == (0.0, 300, False)
    assert judge.template == DEFAULT_TEMPLATE and judge.template_source is None


def test_the_judge_prompt_file_is_read_relative_to_the_config_file(
        run: Resolve, write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "judge.txt").write_text("Rate {answer} given {prompt}. JSON only.\n")
    write_config('judge_prompt = "judge.txt"\n')
    judge = run().cycle.judge()
    assert judge.template == "Rate {answer} given {prompt}. JSON only.\n"
    assert judge.template_source == str(tmp_path / "judge.txt")


@pytest.mark.parametrize(("text", "missing"), [
    ("Rate this: {prompt}", "lacks the {answer} placeholder"),
    ("Rate this answer.", "lacks the {prompt} and {answer} placeholders"),
])
def test_a_judge_prompt_without_its_placeholders_is_refused(
        run: Resolve, write_config: WriteConfig, tmp_path: Path, text: str, missing: str) -> None:
    (tmp_path / "judge.txt").write_text(text)
    write_config('judge_prompt = "judge.txt"\n')
    with pytest.raises(InputError, match=re.escape(missing)):
        run().cycle.judge()


def test_a_missing_judge_prompt_file_is_one_line(run: Resolve, write_config: WriteConfig,
                                                 tmp_path: Path) -> None:
    write_config('judge_prompt = "nowhere.txt"\n')
    with pytest.raises(InputError, match="cannot read the judge prompt .*nowhere.txt"):
        run().cycle.judge()


def test_reads_the_gate_section(run: Resolve, write_config: WriteConfig) -> None:
    write_config("[gate]\nmin_traces = 10\nmin_below_threshold = 2\nscore_threshold = 0.7\n"
                 "max_mean_score = 0.9\ntoken_budget = 50000\n")
    assert run().cycle.gate() == GateConfig(min_traces=10, min_below_threshold=2,
                                            score_threshold=0.7, max_mean_score=0.9,
                                            token_budget=50000)


def test_the_gate_lets_everything_through_by_default(run: Resolve) -> None:
    assert run().cycle.gate() == GateConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("[judge]\nstructured_output = 1\n", "judge.structured_output must be true or false, not 1"),
    ("[gate]\ntoken_budget = 0\n", "gate.token_budget must be an integer >= 1, not 0"),
    ("[gate]\nscore_threshold = 1.5\n", "gate.score_threshold must be a number from 0 to 1"),
    ("[timeouts]\npoll_factor = 0.5\n", "timeouts.poll_factor must be a number >= 1, not 0.5"),
    ("[timeouts]\npoll_first = 0\n", "timeouts.poll_first must be a number > 0, not 0"),
])
def test_bad_judge_and_gate_values_are_refused(run: Resolve, write_config: WriteConfig,
                                               text: str, message: str) -> None:
    write_config(text)
    with pytest.raises(InputError, match=re.escape(message)):
        run()


def test_a_boolean_from_the_environment_may_be_spelled_as_a_word() -> None:
    key = KEY_BY_NAME["judge.structured_output"]
    assert key.check("off", text=True, label="X") is False
    assert key.check("TRUE", text=True, label="X") is True
    with pytest.raises(InputError, match="X must be true or false"):
        key.check("maybe", text=True, label="X")


def test_reads_the_api_section(run: Resolve, write_config: WriteConfig) -> None:
    write_config('[api]\ntrace_shape = "batch"\n')
    assert run().settings.trace_shape == "batch"


def test_integers_become_floats_where_numbers_are_wanted(run: Resolve, write_config: WriteConfig) -> None:
    write_config("[timeouts]\nread = 30\n")
    read = run().settings.read_timeout
    assert read == 30.0 and isinstance(read, float)


def test_dotted_keys_at_top_level_are_the_same_as_a_section(run: Resolve,
                                                            write_config: WriteConfig) -> None:
    write_config("retry.max_attempts = 2\n")
    assert run().settings.retry.max_attempts == 2


def test_a_bom_at_the_start_of_the_file_is_ignored(run: Resolve, write_config: WriteConfig) -> None:
    write_config('\ufeffproject_id = "p"\n')
    assert run().cycle.project_id == "p"


# precedence: command line > environment > file > default


CASES = [  # (dotted key, command line value, environment variable, env value, TOML line, where, expected)
    ("db", "sqlite:///cli.db", "CFTRUNNER_DB", "sqlite:///env.db", 'db = "sqlite:////f.db"',
     lambda r: r.settings.db_url, ("sqlite:///cli.db", "sqlite:///env.db", "sqlite:////f.db")),
    ("log_level", "error", "CFTRUNNER_LOG_LEVEL", "warning", 'log_level = "debug"',
     lambda r: r.log_level, ("error", "warning", "debug")),
    ("retry.max_attempts", 7, "CFTRUNNER_MAX_ATTEMPTS", "8", "retry.max_attempts = 9",
     lambda r: r.settings.retry.max_attempts, (7, 8, 9)),
    ("timeouts.read", 1.5, "CFTRUNNER_READ_TIMEOUT", "2.5", "timeouts.read = 3.5",
     lambda r: r.settings.read_timeout, (1.5, 2.5, 3.5)),
    ("timeouts.poll_first", 0.5, "CFTRUNNER_POLL_FIRST", "0.75", "timeouts.poll_first = 1.5",
     lambda r: r.settings.poll_first, (0.5, 0.75, 1.5)),
    ("interval", "1h", "CFTRUNNER_INTERVAL", "2h", 'interval = "3h"',
     lambda r: r.cycle.interval, (3600.0, 7200.0, 10800.0)),
]
CASE_IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("key", "cli", "variable", "env", "line", "get", "expected"), CASES, ids=CASE_IDS)
def test_the_command_line_wins_over_the_environment_and_the_file(
        run: Resolve, write_config: WriteConfig, key: str, cli: object, variable: str, env: str,
        line: str, get: Callable[[Resolved], object], expected: tuple[object, ...]) -> None:
    write_config(line + "\n")
    resolved = run({key: cli}, {variable: env})
    assert (get(resolved), resolved.sources[key]) == (expected[0], "command line")


@pytest.mark.parametrize(("key", "cli", "variable", "env", "line", "get", "expected"), CASES, ids=CASE_IDS)
def test_the_environment_wins_over_the_file(
        run: Resolve, write_config: WriteConfig, key: str, cli: object, variable: str, env: str,
        line: str, get: Callable[[Resolved], object], expected: tuple[object, ...]) -> None:
    write_config(line + "\n")
    resolved = run({}, {variable: env})
    assert (get(resolved), resolved.sources[key]) == (expected[1], f"environment {variable}")


@pytest.mark.parametrize(("key", "cli", "variable", "env", "line", "get", "expected"), CASES, ids=CASE_IDS)
def test_the_file_wins_over_the_default(
        run: Resolve, write_config: WriteConfig, key: str, cli: object, variable: str, env: str,
        line: str, get: Callable[[Resolved], object], expected: tuple[object, ...]) -> None:
    path = write_config(line + "\n")
    resolved = run()
    assert (get(resolved), resolved.sources[key]) == (expected[2], f"file {path}")
    assert resolved.config_path == str(path)


def test_the_command_line_wins_over_the_file_for_a_key_without_a_variable(
        run: Resolve, write_config: WriteConfig) -> None:
    write_config("split_percentage = 60\n")
    resolved = run({"split_percentage": 90})
    assert (resolved.cycle.split_percentage, resolved.sources["split_percentage"]) == (90, "command line")


def test_an_empty_environment_variable_is_unset(run: Resolve, write_config: WriteConfig) -> None:
    write_config("retry.max_attempts = 9\n")
    assert run({}, {"CFTRUNNER_MAX_ATTEMPTS": ""}).settings.retry.max_attempts == 9


def test_none_on_the_command_line_is_not_given(run: Resolve) -> None:
    resolved = run({"db": None, "split_percentage": None}, {"CFTRUNNER_DB": "sqlite:///env.db"})
    assert resolved.settings.db_url == "sqlite:///env.db"
    assert resolved.sources["split_percentage"] == "default"


def test_an_unknown_command_line_key_is_a_programming_error(run: Resolve) -> None:
    with pytest.raises(ValueError, match="max_atempts"):
        run({"max_atempts": 3})


# paths


def test_relative_paths_in_the_file_are_relative_to_its_folder(
        tmp_path: Path, run: Resolve, write_config: WriteConfig) -> None:
    path = write_config('prompts = "data/prompts.json"\napi_key_file = "../key"\n', "etc/cft.toml")
    (tmp_path / "key").write_text(KEY + "\n")
    resolved = run({"config": str(path)})
    assert resolved.cycle.prompts == str(tmp_path / "etc" / "data" / "prompts.json")
    assert resolved.api_key_file == str(tmp_path / "key")
    assert resolved.settings.api_key == KEY


def test_a_relative_sqlite_file_in_the_file_is_relative_to_its_folder_which_is_created(
        tmp_path: Path, run: Resolve, write_config: WriteConfig) -> None:
    path = write_config('db = "sqlite:///state/runs.db?timeout=5"\n', "etc/cft.toml")
    resolved = run({"config": str(path)})
    assert resolved.settings.db_url == f"sqlite:///{tmp_path}/etc/state/runs.db?timeout=5"
    assert (tmp_path / "etc" / "state").is_dir()


@pytest.mark.parametrize("url", ["sqlite:////var/lib/cft.db", "sqlite://", "sqlite:///:memory:",
                                 "postgresql://u@db/cft"])
def test_other_database_urls_in_the_file_are_left_as_written(
        run: Resolve, write_config: WriteConfig, url: str) -> None:
    write_config(f'db = "{url}"\n')
    assert run().settings.db_url == url


def test_command_line_paths_are_relative_to_the_working_directory(tmp_path: Path, run: Resolve,
                                                                  write_config: WriteConfig) -> None:
    path = write_config('prompts = "p.json"\n', "etc/cft.toml")
    resolved = run({"config": str(path), "prompts": "mine.json"})
    assert resolved.cycle.prompts == str(tmp_path / "mine.json")


def test_the_default_db_stays_relative_and_its_state_folder_is_created(tmp_path: Path,
                                                                      run: Resolve) -> None:
    assert run().settings.db_url == DEFAULT_DB
    assert (tmp_path / "state").is_dir()


def test_a_db_from_the_environment_is_kept_as_given(tmp_path: Path, run: Resolve) -> None:
    assert run({}, {"CFTRUNNER_DB": "sqlite:///here.db"}).settings.db_url == "sqlite:///here.db"
    assert not (tmp_path / "state").exists()


# which file


def test_cftrunner_toml_in_the_working_directory_is_picked_up(run: Resolve,
                                                              write_config: WriteConfig) -> None:
    path = write_config('model_alias = "m"\n')
    resolved = run()
    assert (resolved.config_path, resolved.cycle.model_alias) == (str(path), "m")


def test_cftrunner_config_names_the_file(run: Resolve, write_config: WriteConfig) -> None:
    write_config('model_alias = "default"\n')
    other = write_config('model_alias = "other"\n', "other.toml")
    assert run({}, {"CFTRUNNER_CONFIG": str(other)}).cycle.model_alias == "other"


def test_the_config_option_wins_over_cftrunner_config(run: Resolve, write_config: WriteConfig) -> None:
    chosen = write_config('model_alias = "chosen"\n', "chosen.toml")
    other = write_config('model_alias = "other"\n', "other.toml")
    resolved = run({"config": "chosen.toml"}, {"CFTRUNNER_CONFIG": str(other)})
    assert (resolved.config_path, resolved.cycle.model_alias) == (str(chosen), "chosen")


@pytest.mark.parametrize(("cli", "env", "named_by"), [
    ({"config": "missing.toml"}, {}, "--config"),
    ({}, {"CFTRUNNER_CONFIG": "missing.toml"}, "CFTRUNNER_CONFIG"),
])
def test_a_named_config_file_that_does_not_exist_is_an_error(
        tmp_path: Path, run: Resolve, cli: dict[str, str], env: dict[str, str], named_by: str) -> None:
    message = refusal(run, cli, env)
    assert str(tmp_path / "missing.toml") in message and named_by in message
    assert "does not exist" in message


def test_a_config_file_that_is_a_folder_is_an_error(tmp_path: Path, run: Resolve) -> None:
    (tmp_path / "conf.d").mkdir()
    assert "cannot read the config file" in refusal(run, {"config": "conf.d"})


# the API key


@pytest.mark.parametrize("text", [
    'api_key = "sk-secret"\n',
    '[retry]\napi_key = "sk-secret"\n',
    '[[extra]]\nAPI_KEY = "sk-secret"\n',
])
def test_an_api_key_in_the_file_is_refused(run: Resolve, write_config: WriteConfig, text: str) -> None:
    path = write_config(text)
    message = refusal(run)
    assert message.startswith(f"{path}: ") and "api_key_file" in message and "API_KEY" in message
    assert "sk-secret" not in message


def test_the_key_comes_from_the_environment(run: Resolve) -> None:
    resolved = run({}, {"PREMAI_API_KEY": f" {KEY} "})
    assert (resolved.settings.api_key, resolved.sources["api_key"]) == (KEY, "environment PREMAI_API_KEY")


def test_the_key_comes_from_the_file_that_api_key_file_names(tmp_path: Path, run: Resolve,
                                                             write_config: WriteConfig) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    write_config('api_key_file = "key"\n')
    resolved = run()
    assert (resolved.settings.api_key, resolved.sources["api_key"]) == (KEY, f"file {tmp_path / 'key'}")


def test_the_environment_key_wins_over_api_key_file_in_the_file(run: Resolve,
                                                                write_config: WriteConfig) -> None:
    write_config('api_key_file = "missing-key"\n')
    assert run({}, {"API_KEY": KEY}).settings.api_key == KEY


def test_a_key_file_on_the_command_line_wins_over_the_environment(tmp_path: Path, run: Resolve) -> None:
    (tmp_path / "key").write_text(KEY)
    resolved = run({"api_key_file": "key"}, {"API_KEY": "from-env"})
    assert resolved.settings.api_key == KEY


def test_the_key_on_the_command_line_wins_over_everything(tmp_path: Path, run: Resolve) -> None:
    (tmp_path / "key").write_text("from-file")
    resolved = run({"api_key": KEY, "api_key_file": "key"}, {"API_KEY": "from-env"})
    assert (resolved.settings.api_key, resolved.sources["api_key"]) == (KEY, "command line")


def test_an_unreadable_key_file_is_an_error(tmp_path: Path, run: Resolve,
                                            write_config: WriteConfig) -> None:
    write_config('api_key_file = "nope"\n')
    assert f"cannot read the API key file {tmp_path / 'nope'}" in refusal(run)


def test_the_held_out_prompts_are_checked_as_the_prompts_are(tmp_path: Path) -> None:
    holdout = tmp_path / "holdout.json"
    holdout.write_text('["fine", "not\\u0000fine"]')
    with pytest.raises(InputError, match=re.escape(f"{holdout}: prompt 1 holds a NUL character")):
        Cycle(promote=True, holdout_prompts=str(holdout)).loop()


@pytest.mark.parametrize("text", ["", " \n\t\n"])
def test_an_empty_key_file_is_an_error_naming_it(tmp_path: Path, run: Resolve, text: str) -> None:
    (tmp_path / "key").write_text(text)
    assert refusal(run, {"api_key_file": "key"}) == f"the API key file {tmp_path / 'key'} is empty"


def test_a_key_file_others_may_read_is_used_with_a_warning(tmp_path: Path, run: Resolve) -> None:
    (tmp_path / "key").write_text(KEY)
    (tmp_path / "key").chmod(0o644)
    resolved = run({"api_key_file": "key"})
    assert resolved.settings.api_key == KEY
    [(event, fields)] = resolved.notices
    assert event == "api_key_file_permissions"
    assert fields["path"] == str(tmp_path / "key") and fields["mode"] == "0644"


def test_a_key_file_only_its_owner_may_read_gives_no_warning(tmp_path: Path, run: Resolve) -> None:
    (tmp_path / "key").write_text(KEY)
    (tmp_path / "key").chmod(0o600)
    assert run({"api_key_file": "key"}).notices == ()


def test_no_key_anywhere_is_empty_not_an_error(run: Resolve) -> None:
    resolved = run()
    assert (resolved.settings.api_key, resolved.sources["api_key"]) == ("", "default")


# unknown keys and wrong types


@pytest.mark.parametrize(("text", "named"), [
    ("projct_id = 'p'\n", "unknown key projct_id (did you mean project_id?)"),
    ("[retry]\nmax_attempt = 3\n", "unknown key retry.max_attempt (did you mean retry.max_attempts?)"),
    ("[timeouts]\nwhatever = 3\n", "unknown key timeouts.whatever"),
    ("[logging]\nlevel = 'info'\n", "unknown section [logging]"),
    ("[retrys]\nmax_attempts = 3\n", "unknown section [retrys] (did you mean retry?)"),
    ("max_attempts = 3\n", "unknown key max_attempts (did you mean retry.max_attempts?)"),
])
def test_an_unknown_key_is_an_error_naming_the_dotted_key(
        run: Resolve, write_config: WriteConfig, text: str, named: str) -> None:
    path = write_config(text)
    assert refusal(run) == f"{path}: {named}"


def test_a_section_that_is_not_a_table_is_an_error(run: Resolve, write_config: WriteConfig) -> None:
    path = write_config("retry = 3\n")
    assert refusal(run) == f"{path}: retry must be a table ([retry]), not 3"


@pytest.mark.parametrize(("text", "message"), [
    ('[retry]\nmax_attempts = "six"\n', 'retry.max_attempts must be an integer >= 1, not "six"'),
    ("[retry]\nmax_attempts = 2.5\n", "retry.max_attempts must be an integer >= 1, not 2.5"),
    ("[timeouts]\nread = true\n", "timeouts.read must be a number > 0, not true"),
    ("split_percentage = false\n", "split_percentage must be an integer from 1 to 99, not false"),
    ('[judge]\ntemperature = "0.1"\n', 'judge.temperature must be a number from 0 to 2, not "0.1"'),
    ("project_id = 42\n", "project_id must be a non-empty string, not 42"),
    ("model_alias = [1]\n", "model_alias must be a non-empty string, not an array"),
    ("base_url = { host = 'x' }\n", "base_url must be a URL starting with http:// or https://, not a table"),
    ("interval = true\n", "interval must be a duration > 0"),
    ("judge_model = 2024-01-01\n", "judge_model must be a non-empty string, not a date"),
])
def test_a_wrong_type_is_an_error_naming_the_dotted_key(
        run: Resolve, write_config: WriteConfig, text: str, message: str) -> None:
    path = write_config(text)
    assert refusal(run).startswith(f"{path}: {message}")


# impossible values


@pytest.mark.parametrize(("text", "message"), [
    ("split_percentage = 0\n", "split_percentage must be an integer from 1 to 99, not 0"),
    ("split_percentage = 100\n", "split_percentage must be an integer from 1 to 99, not 100"),
    ("interval = 0\n", "interval must be a duration > 0"),
    ("interval = -60\n", "interval must be a duration > 0"),
    ('failed_retry_interval = "-5m"\n', "failed_retry_interval must be a duration >= 0"),
    ('interval = "5 parsecs"\n', 'interval must be a duration > 0 ("90s", "30m", "24h", "7d" or a number'
                                 ' of seconds), not "5 parsecs"'),
    ("[retry]\nmax_attempts = 0\n", "retry.max_attempts must be an integer >= 1, not 0"),
    ("[retry]\nbase_delay = -0.5\n", "retry.base_delay must be a number >= 0, not -0.5"),
    ("[timeouts]\nconnect = 0\n", "timeouts.connect must be a number > 0, not 0"),
    ("[timeouts]\nlease = -1\n", "timeouts.lease must be a number > 0, not -1"),
    ("[timeouts]\nreconcile_settle = -1\n", "timeouts.reconcile_settle must be a number >= 0, not -1"),
    ("[timeouts]\nprocessing = inf\n", "timeouts.processing must be a number > 0, not inf"),
    ("[timeouts]\nread = nan\n", "timeouts.read must be a number > 0, not nan"),
    ("[judge]\nattempts = 0\n", "judge.attempts must be an integer >= 1, not 0"),
    ("[judge]\ntemperature = 2.5\n", "judge.temperature must be a number from 0 to 2, not 2.5"),
    ('[api]\ntrace_shape = "csv"\n', 'api.trace_shape must be one of "tutorial", "batch", not "csv"'),
    ('log_level = "verbose"\n',
     'log_level must be one of "debug", "info", "warning", "error", not "verbose"'),
    ('base_url = "studio.premai.io"\n', "base_url must be a URL starting with http:// or https://"),
    ('base_url = "http://:80"\n', 'base_url must be a URL starting with http:// or https://'),
    ('[notify]\nwebhook_url = "https://hooks.example:port/x"\n',
     'notify.webhook_url must be a URL starting with http:// or https://'),
    ('db = "state/cftrunner.db"\n', "db must be an SQLAlchemy URL"),
    ('project_id = "  "\n', 'project_id must be a non-empty string, not "  "'),
])
def test_an_impossible_value_is_an_error_naming_the_dotted_key(
        run: Resolve, write_config: WriteConfig, text: str, message: str) -> None:
    path = write_config(text)
    assert refusal(run).startswith(f"{path}: {message}")


def test_a_huge_integer_is_refused_rather_than_overflowing(run: Resolve, write_config: WriteConfig) -> None:
    write_config(f"[timeouts]\nread = {10**400}\n")
    assert "timeouts.read must be a number > 0" in refusal(run)


def test_the_first_bad_key_in_file_order_is_the_one_named(run: Resolve, write_config: WriteConfig) -> None:
    write_config("split_percentage = 0\n[retry]\nmax_attempts = 0\n")
    assert "split_percentage" in refusal(run)


# syntax


def test_a_toml_syntax_error_names_the_file_and_the_line(run: Resolve, write_config: WriteConfig) -> None:
    path = write_config('project_id = "p"\nmodel_alias = \n')
    message = refusal(run)
    assert message.startswith(f"{path}: invalid TOML: ") and "line 2" in message


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path, run: Resolve) -> None:
    (tmp_path / "cftrunner.toml").write_bytes(b'project_id = "\xff"\n')
    assert refusal(run) == f"{tmp_path / 'cftrunner.toml'}: not UTF-8 text"


# durations


@pytest.mark.parametrize(("value", "seconds"), [
    ('"90s"', 90), ('"30m"', 1800), ('"24h"', 86400), ('"7d"', 604800), ('"2.5h"', 9000),
    ('"45"', 45), ("45", 45), ("1.5", 1.5), ('"0s"', 0),
])
def test_a_duration_is_a_string_with_a_unit_or_a_number_of_seconds(
        run: Resolve, write_config: WriteConfig, value: str, seconds: float) -> None:
    write_config(f"failed_retry_interval = {value}\n")
    assert run().cycle.failed_retry_interval == seconds


@pytest.mark.parametrize("text", ["5 parsecs", "1h30m", "", "h", "-5m", "5w", "1e3"])
def test_other_duration_strings_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# describe


def test_describe_lists_every_key_in_the_file_order_with_its_source(
        run: Resolve, write_config: WriteConfig) -> None:
    path = write_config('model_alias = "m"\n[judge]\nattempts = 4\n')
    rows = describe(run({"project_id": "p"}, {"CFTRUNNER_LOG_LEVEL": "debug"}))
    keys = [key for key, _, _ in rows]
    assert keys[:4] == ["project_id", "model_alias", "prompts", "judge_model"]
    assert keys.index("api_key_file") + 1 == keys.index("api_key")
    assert keys.index("retry.max_attempts") < keys.index("timeouts.connect") < keys.index("judge.attempts")
    assert keys[-4:] == ["api.trace_shape", "api.marker_traces", "api.concurrency", "api.max_rps"]
    table = {key: (value, source) for key, value, source in rows}
    assert table["project_id"] == ("p", "command line")
    assert table["model_alias"] == ("m", f"file {path}")
    assert table["log_level"] == ("debug", "environment CFTRUNNER_LOG_LEVEL")
    assert table["judge.attempts"] == ("4", f"file {path}")
    assert table["prompts"] == ("(not set)", "default")


def test_describe_shows_durations_and_numbers_as_written(run: Resolve) -> None:
    table = {key: value for key, value, _ in describe(run({}, {"CFTRUNNER_INTERVAL": "90m"}))}
    assert (table["interval"], table["failed_retry_interval"]) == ("90m", "1h")
    assert (table["retry.max_delay"], table["retry.base_delay"]) == ("30", "0.5")


def test_describe_never_shows_the_full_key(run: Resolve) -> None:
    rows = describe(run({}, {"API_KEY": KEY}))
    assert ("api_key", "****WXYZ", "environment API_KEY") in rows
    assert not any(KEY in field for row in rows for field in row)


def test_describe_shows_none_of_a_short_key(run: Resolve) -> None:
    rows = describe(run({}, {"API_KEY": "abcd1234"}))
    assert ("api_key", "****", "environment API_KEY") in rows


def test_describe_says_when_there_is_no_key(run: Resolve) -> None:
    assert ("api_key", "(not set)", "default") in describe(run())


# the environment


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("CFTRUNNER_MAX_ATTEMPTS", "six", 'CFTRUNNER_MAX_ATTEMPTS must be an integer >= 1, not "six"'),
    ("CFTRUNNER_MAX_ATTEMPTS", "0", 'CFTRUNNER_MAX_ATTEMPTS must be an integer >= 1, not "0"'),
    ("CFTRUNNER_READ_TIMEOUT", "-1", 'CFTRUNNER_READ_TIMEOUT must be a number > 0, not "-1"'),
    ("CFTRUNNER_POLL_INTERVAL", "nan", 'CFTRUNNER_POLL_INTERVAL must be a number > 0, not "nan"'),
    ("CFTRUNNER_LEASE_SECONDS", "0", 'CFTRUNNER_LEASE_SECONDS must be a number > 0, not "0"'),
    ("CFTRUNNER_SHUTDOWN_GRACE", "soon", 'CFTRUNNER_SHUTDOWN_GRACE must be a number > 0, not "soon"'),
    ("CFTRUNNER_INTERVAL", "5 parsecs", 'CFTRUNNER_INTERVAL must be a duration > 0'),
    ("CFTRUNNER_TRACE_SHAPE", "csv", 'CFTRUNNER_TRACE_SHAPE must be one of "tutorial", "batch"'),
    ("CFTRUNNER_LOG_LEVEL", "loud", "CFTRUNNER_LOG_LEVEL must be one of"),
    ("CFTRUNNER_BASE_URL", "ftp://x", "CFTRUNNER_BASE_URL must be a URL starting with http://"),
    ("CFTRUNNER_BASE_URL", "https://:443", "CFTRUNNER_BASE_URL must be a URL starting with http://"),
    ("CFTRUNNER_DB", "cftrunner.db", "CFTRUNNER_DB must be an SQLAlchemy URL"),
])
def test_a_bad_environment_value_is_an_error_naming_the_variable(
        run: Resolve, variable: str, value: str, message: str) -> None:
    assert refusal(run, {}, {variable: value}).startswith(message)


def test_environment_numbers_and_durations_are_read_from_text(run: Resolve) -> None:
    resolved = run({}, {"CFTRUNNER_LEASE_SECONDS": "90", "CFTRUNNER_SHUTDOWN_GRACE": "2.5",
                        "CFTRUNNER_INTERVAL": "3600", "CFTRUNNER_TRACE_SHAPE": "BATCH"})
    assert (resolved.settings.lease_seconds, resolved.settings.shutdown_grace) == (90.0, 2.5)
    assert (resolved.cycle.interval, resolved.settings.trace_shape) == (3600.0, "batch")


def test_a_bad_file_is_reported_even_when_the_environment_overrides_the_key(
        run: Resolve, write_config: WriteConfig) -> None:
    """The file is checked as a whole, so a mistake in it does not wait for the variable to go away."""
    write_config("[retry]\nmax_atempts = 2\n")
    assert "unknown key retry.max_atempts" in refusal(run, {}, {"CFTRUNNER_MAX_ATTEMPTS": "3"})


def test_the_log_levels_are_the_logging_module_s() -> None:
    assert LOG_LEVELS == logs.LEVELS


def test_config_imports_no_io_libraries() -> None:
    code = ("import sys, cftrunner.config.describe; "
            "print(sorted(m for m in ('sqlalchemy', 'requests', 'click') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]", result.stderr


# several cycles: [[cycles]]


TWO_CYCLES = """
    project_id = "proj-1"
    model_alias = "shared-model"
    prompts = "prompts.json"
    interval = "12h"
    [judge]
    attempts = 4
    temperature = 0.3
    [gate]
    min_traces = 5

    [[cycles]]
    name = "alpha"

    [[cycles]]
    project_id = "proj-2"
    model_alias = "other-model"
    prompts = "data/other.json"
    judge_prompt = "judge-b.txt"
    interval = "1h"
    [cycles.judge]
    temperature = 0
    structured_output = false
    [cycles.gate]
    min_traces = 1000
    max_mean_score = 0.8
"""


def test_without_cycles_the_top_level_keys_are_the_one_cycle(run: Resolve,
                                                             write_config: WriteConfig) -> None:
    write_config('project_id = "p"\nmodel_alias = "m"\n')
    resolved = run()
    assert resolved.cycles == (resolved.cycle,)
    assert (resolved.cycle.name, resolved.cycle.title, resolved.cycle.origin) == (None, "p/m", None)


def test_each_cycles_entry_is_a_cycle_in_the_file_s_order(run: Resolve,
                                                          write_config: WriteConfig) -> None:
    write_config(TWO_CYCLES)
    resolved = run()
    assert [cycle.title for cycle in resolved.cycles] == ["alpha", "proj-2/other-model"]
    assert [cycle.name for cycle in resolved.cycles] == ["alpha", None]
    assert resolved.cycle is resolved.cycles[0]


def test_an_entry_inherits_the_top_level_keys_it_does_not_set(
        run: Resolve, write_config: WriteConfig, tmp_path: Path) -> None:
    write_config(TWO_CYCLES)
    alpha = run().cycles[0]
    assert alpha == Cycle(
        name="alpha", project_id="proj-1", model_alias="shared-model",
        prompts=str(tmp_path / "prompts.json"), interval=43200.0, judge_temperature=0.3,
        gate_min_traces=5)


def test_an_entry_s_own_keys_and_judge_and_gate_tables_override_the_top_level(
        run: Resolve, write_config: WriteConfig, tmp_path: Path) -> None:
    write_config(TWO_CYCLES)
    resolved = run()
    other = resolved.cycles[1]
    assert (other.project_id, other.model_alias, other.interval) == ("proj-2", "other-model", 3600.0)
    assert (other.judge_temperature, other.structured_output) == (0.0, False)
    assert other.gate() == GateConfig(min_traces=1000, max_mean_score=0.8)
    assert resolved.settings.judge_attempts == 4  # a setting, not per cycle: for every cycle


def test_relative_paths_in_an_entry_are_relative_to_the_config_file_s_folder(
        tmp_path: Path, run: Resolve, write_config: WriteConfig) -> None:
    path = write_config(TWO_CYCLES, "etc/cft.toml")
    other = run({"config": str(path)}).cycles[1]
    assert other.prompts == str(tmp_path / "etc" / "data" / "other.json")
    assert other.judge_prompt == str(tmp_path / "etc" / "judge-b.txt")


def test_the_environment_and_command_line_are_inherited_unless_the_entry_sets_the_key(
        run: Resolve, write_config: WriteConfig) -> None:
    write_config(TWO_CYCLES)
    resolved = run({"split_percentage": 60}, {"CFTRUNNER_INTERVAL": "2d"})
    assert [cycle.split_percentage for cycle in resolved.cycles] == [60, 60]
    assert [cycle.interval for cycle in resolved.cycles] == [172800.0, 3600.0]


def test_two_entries_for_the_same_model_with_different_names_are_two_cycles(
        run: Resolve, write_config: WriteConfig) -> None:
    write_config('project_id = "p"\nmodel_alias = "m"\n'
                 '[[cycles]]\nname = "daily"\n[[cycles]]\nname = "weekly"\ninterval = "7d"\n')
    assert [cycle.title for cycle in run().cycles] == ["daily", "weekly"]


def test_select_picks_a_cycle_by_name_or_all_of_them(run: Resolve, write_config: WriteConfig) -> None:
    write_config(TWO_CYCLES)
    resolved = run()
    assert select(resolved, None) == resolved.cycles
    assert select(resolved, "proj-2/other-model") == (resolved.cycles[1],)


def test_select_refuses_an_unknown_name_listing_the_cycles(run: Resolve,
                                                          write_config: WriteConfig) -> None:
    write_config(TWO_CYCLES)
    with pytest.raises(InputError) as raised:
        select(run(), "beta")
    assert raised.value.message == ('no cycle named "beta"; the cycles are "alpha", '
                                    '"proj-2/other-model"')


def test_sources_name_the_entry_for_the_keys_the_first_entry_sets(
        run: Resolve, write_config: WriteConfig) -> None:
    path = write_config('project_id = "p"\n[[cycles]]\nmodel_alias = "m"\n[[cycles]]\n'
                        'model_alias = "n"\nsplit_percentage = 50\n')
    resolved = run()
    assert resolved.sources["model_alias"] == f"file {path}, [[cycles]] entry 1"
    assert resolved.sources["project_id"] == f"file {path}"
    assert resolved.cycle_sources[1]["split_percentage"] == f"file {path}, [[cycles]] entry 2"


def test_describe_cycles_lists_each_entry_s_own_keys(run: Resolve, write_config: WriteConfig) -> None:
    write_config('project_id = "p"\nmodel_alias = "m"\n[[cycles]]\nname = "a"\n'
                 '[[cycles]]\nmodel_alias = "n"\n[cycles.gate]\nmin_traces = 1000\n')
    assert describe_cycles(run()) == ["cycle a: every key inherited",
                                             "cycle p/n: model_alias = n, gate.min_traces = 1000"]


def test_describe_cycles_is_empty_without_cycles(run: Resolve) -> None:
    assert describe_cycles(run()) == []


def test_an_entry_missing_a_needed_key_is_refused_only_when_a_cycle_is_run(
        run: Resolve, write_config: WriteConfig) -> None:
    path = write_config('model_alias = "m"\n[[cycles]]\nproject_id = "p"\nprompts = "p.json"\n'
                        '[[cycles]]\nname = "lost"\n')
    from cftrunner.service.schedule import spec_from  # here: the rest of this module needs no runner

    incomplete = run().cycles[1]  # resolving is fine: `config` shows such a file
    with pytest.raises(InputError) as raised:
        spec_from(incomplete, None, "tick")
    assert raised.value.message == (f"{path}: [[cycles]] entry 2 (lost): tick needs project_id, "
                                    "prompts (in the entry or at the top level of the file)")


def entry_refusal(run: Resolve, write_config: WriteConfig, entries: str) -> tuple[Path, str]:
    path = write_config('project_id = "p"\nmodel_alias = "m"\n\n[[cycles]]\nname = "first"\n\n'
                        + textwrap.dedent(entries))
    return path, refusal(run)


@pytest.mark.parametrize(("entry", "message"), [
    ('db = "sqlite:///x.db"\n', "db is not a per-cycle key; set it at the top level of the file"),
    ('base_url = "http://x"\n', "base_url is not a per-cycle key"),
    ("[cycles.retry]\nmax_attempts = 3\n", "retry.max_attempts is not a per-cycle key"),
    ("[cycles.timeouts]\nlease = 3\n", "timeouts.lease is not a per-cycle key"),
    ("[cycles.judge]\nattempts = 3\n", "judge.attempts is not a per-cycle key"),
    ('[cycles.api]\ntrace_shape = "batch"\n', "api.trace_shape is not a per-cycle key"),
    ('log_level = "debug"\n', "log_level is not a per-cycle key"),
])
def test_a_key_that_is_not_per_cycle_in_an_entry_is_refused_naming_file_entry_and_key(
        run: Resolve, write_config: WriteConfig, entry: str, message: str) -> None:
    path, refused = entry_refusal(run, write_config, "[[cycles]]\nname = \"second\"\n" + entry)
    assert refused.startswith(f"{path}: [[cycles]] entry 2 (second): {message}")


@pytest.mark.parametrize(("entry", "message"), [
    ("intervall = '1h'\n", "unknown key intervall (did you mean interval?)"),
    ("nmae = 'x'\n", "unknown key nmae (did you mean name?)"),
    ("[cycles.judge]\ntemprature = 0\n", "unknown key judge.temprature (did you mean judge.temperature?)"),
    ("[cycles.gate]\nmin_trace = 1\n", "unknown key gate.min_trace (did you mean gate.min_traces?)"),
    ("[cycles.gates]\nmin_traces = 1\n", "unknown section [cycles.gates] (did you mean gate?)"),
    ("judge = 3\n", "judge must be a table ([cycles.judge]), not 3"),
])
def test_an_unknown_key_in_an_entry_is_refused_with_a_hint(
        run: Resolve, write_config: WriteConfig, entry: str, message: str) -> None:
    path, refused = entry_refusal(run, write_config, "[[cycles]]\n" + entry)
    assert refused == f"{path}: [[cycles]] entry 2 (p/m): {message}"


@pytest.mark.parametrize(("entry", "message"), [
    ("[cycles.gate]\nmin_traces = -1\n", " (p/m): gate.min_traces must be an integer >= 0, not -1"),
    ("split_percentage = 100\n", " (p/m): split_percentage must be an integer from 1 to 99, not 100"),
    ("name = 3\n", " (p/m): name must be a non-empty string, not 3"),
    ('name = " "\n', ': name must be a non-empty string, not " "'),
])
def test_a_bad_value_in_an_entry_is_refused_naming_file_entry_and_key(
        run: Resolve, write_config: WriteConfig, entry: str, message: str) -> None:
    path, refused = entry_refusal(run, write_config, "[[cycles]]\n" + entry)
    assert refused == f"{path}: [[cycles]] entry 2{message}"


@pytest.mark.parametrize(("entries", "message"), [
    ('[[cycles]]\nname = "first"\n', 'entry 2 (first): name "first" is entry 1\'s too'),
    ('[[cycles]]\nmodel_alias = "n"\n[[cycles]]\nname = "x"\n[[cycles]]\nmodel_alias = "n"\n',
     'entry 4 (p/n): name "p/n" is entry 2\'s too'),
])
def test_two_entries_with_one_name_are_refused(run: Resolve, write_config: WriteConfig,
                                               entries: str, message: str) -> None:
    path, refused = entry_refusal(run, write_config, entries)
    assert refused == f"{path}: [[cycles]] {message}; give each cycle its own name"


@pytest.mark.parametrize(("text", "shown_as"), [
    ("cycles = 3\n", "3"),
    ('cycles = ["a"]\n', "an array"),
    ("[cycles]\nname = 'a'\n", "a table"),
])
def test_cycles_that_is_not_an_array_of_tables_is_refused(
        run: Resolve, write_config: WriteConfig, text: str, shown_as: str) -> None:
    path = write_config(text)
    assert refusal(run) == f"{path}: cycles must be an array of tables ([[cycles]]), not {shown_as}"


def test_a_misspelt_cycles_section_gets_a_hint(run: Resolve, write_config: WriteConfig) -> None:
    path = write_config("[cycle]\nname = 'a'\n")
    assert refusal(run) == f"{path}: unknown section [cycle] (did you mean cycles?)"


def test_an_api_key_in_an_entry_is_refused(run: Resolve, write_config: WriteConfig) -> None:
    path = write_config('[[cycles]]\napi_key = "sk-secret"\n')
    message = refusal(run)
    assert message.startswith(f"{path}: cycles.api_key is not allowed") and "sk-secret" not in message


# the prompt source


def test_an_entry_sets_its_own_prompt_source_keys(run: Resolve, write_config: WriteConfig,
                                                  tmp_path: Path) -> None:
    write_config('project_id = "p"\nmodel_alias = "m"\nprompts_per_cycle = 50\n'
                 'reuse_after = "30d"\n'
                 '[[cycles]]\nname = "a"\nprompts = "incoming/*.jsonl"\n'
                 '[[cycles]]\nname = "b"\nprompts = "drop/"\nmin_new_prompts = 10\n'
                 'reuse_after = "never"\nprioritise = "weak"\n')
    a, b = run().cycles
    assert (a.prompts, a.prompts_per_cycle, a.min_new_prompts, a.reuse_after, a.prioritise) == (
        str(tmp_path / "incoming" / "*.jsonl"), 50, 1, 30 * 86400.0, "oldest")
    assert (b.prompts, b.prompts_per_cycle, b.min_new_prompts, b.reuse_after, b.prioritise) == (
        str(tmp_path / "drop"), 50, 10, None, "weak")
    assert b.rules() == Rules(per_cycle=50, reuse_after=None, prioritise="weak",
                              neutral_score=0.5)


def test_reuse_after_is_never_unless_set_and_config_shows_it(run: Resolve,
                                                             write_config: WriteConfig) -> None:
    write_config('project_id = "p"\n')
    rows = {key: (value, source) for key, value, source in describe(run())}
    assert rows["reuse_after"] == ("never", "default")
    assert rows["prompts_per_cycle"] == ("(not set)", "default")
    assert rows["min_new_prompts"] == ("1", "default")


@pytest.mark.parametrize(("text", "message"), [
    ('reuse_after = "soon"', 'reuse_after must be a duration >= 0 ("90s", "30m", "24h", "7d", a '
                             'number of seconds or "never"), not "soon"'),
    ("min_new_prompts = 0", "min_new_prompts must be an integer >= 1, not 0"),
    ("prompts_per_cycle = 2.5", "prompts_per_cycle must be an integer >= 1, not 2.5"),
    ('prioritise = "hardest"', 'prioritise must be one of "oldest", "weak", not "hardest"'),
])
def test_a_bad_prompt_source_key_is_refused_naming_it(run: Resolve, write_config: WriteConfig,
                                                      tmp_path: Path, text: str,
                                                      message: str) -> None:
    write_config(text + "\n")
    assert refusal(run) == f"{tmp_path / 'cftrunner.toml'}: {message}"


def test_regression_needs_promote(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="regression = true needs promote = true"):
        Cycle(regression=True).loop()
    holdout = tmp_path / "holdout.json"
    holdout.write_text('["h"]')
    loop = Cycle(promote=True, regression=True, holdout_prompts=str(holdout)).loop()
    assert loop.regression and loop.promote
