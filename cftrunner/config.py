"""The config file, and each setting resolved from the command line, the environment, the file or a default.

`--config FILE` names the file (else CFTRUNNER_CONFIG, else `cftrunner.toml` in the working directory if
there is one). It is TOML and may hold every setting but the API key::

    # the cycle
    project_id = "..."
    model_alias = "my-model-v3"
    prompts = "prompts.json"           # relative paths are relative to the config file's folder
    judge_model = "claude-4.5-sonnet"
    split_percentage = 80              # int 1..99
    interval = "24h"                   # how often tick starts a new cycle: "90s", "30m", "24h", "7d"
                                       # or a number of seconds; > 0
    failed_retry_interval = "1h"       # after a FAILED cycle, tick waits this long before another; >= 0
    # where
    db = "sqlite:///state/cftrunner.db"  # a relative sqlite path is relative to the config file's folder
    base_url = "https://studio.premai.io"
    api_key_file = "/etc/cftrunner/key"  # relative to the config file's folder
    log_level = "info"                 # debug|info|warning|error

    [retry]
    max_attempts = 6                   # int >= 1: tries per request, the first included
    base_delay = 0.5                   # seconds, >= 0
    max_delay = 30                     # >= 0
    max_retry_after = 300              # >= 0: a longer Retry-After stops the run instead

    [timeouts]                         # seconds, all > 0
    connect = 10
    read = 120
    poll_interval = 5
    processing = 1800                  # waiting for the platform's corrections, per invocation
    recommendations = 1800             # waiting for recommendations, per invocation
    reconcile_settle = 15              # >= 0
    lease = 60
    shutdown_grace = 30

    [judge]
    attempts = 3                       # int >= 1
    temperature = 0.1                  # 0..2

    [api]
    trace_shape = "tutorial"           # "tutorial" | "batch"

Precedence: command line > environment > file > default. Integers are accepted where numbers are wanted;
booleans and strings never are. The key comes from --api-key, --api-key-file, API_KEY or PREMAI_API_KEY,
or the file named by `api_key_file`, in that order; a config file holding `api_key` anywhere is refused.
Environment variables: CFTRUNNER_CONFIG, CFTRUNNER_DB, CFTRUNNER_BASE_URL, CFTRUNNER_LOG_LEVEL,
CFTRUNNER_INTERVAL and the variables named in `settings.KEYS`, checked like the file. An unknown key, a
wrong type or an impossible value is one InputError naming the file (or variable) and the dotted key.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cftrunner.exceptions import InputError
from cftrunner.judge import DEFAULT_JUDGE_MODEL
from cftrunner.settings import (
    DEFAULT_FAILED_RETRY_INTERVAL,
    DEFAULT_INTERVAL,
    DEFAULT_SPLIT_PERCENTAGE,
    KEY_BY_NAME,
    KEY_VARIABLES,
    KEYS,
    Key,
    Settings,
    apply,
    duration_text,
    number_text,
    read_key_file,
    shown,
)

DEFAULT_FILE = "cftrunner.toml"
CONFIG_VARIABLE = "CFTRUNNER_CONFIG"
COMMAND_LINE = "command line"
DEFAULT = "default"
NOT_SET = "(not set)"
SECTIONS = ("retry", "timeouts", "judge", "api")
CLI_KEYS = frozenset({key.name for key in KEYS} | {"api_key", "config"})
_SQLITE_FILE = re.compile(r"(sqlite(?:\+\w+)?:///)([^?]*)(\?.*)?", re.DOTALL)


@dataclass(frozen=True)
class Cycle:
    """What `start` and `tick` need besides Settings; None where nothing set it."""

    project_id: str | None = None
    model_alias: str | None = None
    prompts: str | None = None  # an absolute path
    judge_model: str = DEFAULT_JUDGE_MODEL
    split_percentage: int = DEFAULT_SPLIT_PERCENTAGE
    interval: float = DEFAULT_INTERVAL  # seconds between the starts of two cycles
    failed_retry_interval: float = DEFAULT_FAILED_RETRY_INTERVAL  # seconds of rest after a FAILED one


@dataclass(frozen=True)
class Resolved:
    """Every setting, resolved, and where each came from."""

    settings: Settings
    cycle: Cycle
    log_level: str
    config_path: str | None  # the file actually read
    # Dotted key -> "command line", "environment VARIABLE", "file /abs/path" or "default".
    sources: dict[str, str]
    api_key_file: str | None = None  # an absolute path


def resolve(cli: Mapping[str, Any], env: Mapping[str, str] = os.environ,
            cwd: Path | None = None) -> Resolved:
    """Every setting from `cli` (dotted keys; None is not given), then `env`, the config file, defaults.

    The file is `cli["config"]`, else CFTRUNNER_CONFIG, else cftrunner.toml in `cwd` if it exists.
    Paths come out absolute: from the command line against `cwd`, from the file against its folder.
    """
    given = {name: os.fspath(value) if isinstance(value, os.PathLike) else value
             for name, value in cli.items() if value is not None and value != ""}
    if unknown := set(given) - CLI_KEYS:
        raise ValueError(f"not settings: {sorted(unknown)}")
    here = Path(os.path.abspath(Path.cwd() if cwd is None else cwd))
    config = _config_path(given, env, here)
    in_file = _read(config) if config else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        if key.name in given:
            value = key.check(given[key.name], text=True, label="--" + key.name.replace("_", "-"))
            values[key.name] = _anchored(key, value, here, None)
            sources[key.name] = COMMAND_LINE
        elif key.env and env.get(key.env):
            values[key.name] = key.check(env[key.env], text=True, label=key.env)
            sources[key.name] = f"environment {key.env}"
        elif config and key.name in in_file:
            value = key.check(in_file[key.name], text=False, label=f"{config}: {key.name}")
            values[key.name] = _anchored(key, value, config.parent, config)
            sources[key.name] = f"file {config}"
        else:
            values[key.name], sources[key.name] = key.default, DEFAULT
    if sources["db"] == DEFAULT:  # sqlite:///state/cftrunner.db, relative to the working directory
        _make_folder(here / "state", None)
    api_key, sources["api_key"] = _api_key(given, env, values["api_key_file"], sources["api_key_file"])
    cycle = Cycle(**{key.target.removeprefix("cycle."): values[key.name]
                     for key in KEYS if key.target.startswith("cycle.")})
    return Resolved(settings=apply(Settings(api_key=api_key), values), cycle=cycle,
                    log_level=values["log_level"], config_path=str(config) if config else None,
                    sources=sources, api_key_file=values["api_key_file"])


def describe(resolved: Resolved) -> list[tuple[str, str, str]]:
    """(dotted key, value as text, source) for every setting in the file's order; the key redacted."""
    rows: list[tuple[str, str, str]] = []
    for key in KEYS:
        rows.append((key.name, _text(key, _value(resolved, key)), resolved.sources[key.name]))
        if key.name == "api_key_file":
            rows.append(("api_key", redact(resolved.settings.api_key), resolved.sources["api_key"]))
    return rows


def redact(api_key: str) -> str:
    """The key as shown: its last four characters at most, and none of a key too short to spare them."""
    if not api_key:
        return NOT_SET
    return "****" + (api_key[-4:] if len(api_key) >= 12 else "")


def _config_path(given: Mapping[str, Any], env: Mapping[str, str], here: Path) -> Path | None:
    if "config" in given:
        named, by = given["config"], "--config"
    else:
        named, by = env.get(CONFIG_VARIABLE), CONFIG_VARIABLE
    if not named:
        default = here / DEFAULT_FILE
        return default if default.is_file() else None
    path = _absolute(named, here)
    if not path.exists():
        raise InputError(f"the config file {path} (named by {by}) does not exist")
    return path


def _read(path: Path) -> dict[str, Any]:
    """The file's values by dotted key, unchecked; InputError for what no key can accept."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read the config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    try:
        document = tomllib.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError: one line that ends with the position
        raise InputError(f"{path}: invalid TOML: {exc}") from None
    _refuse_api_key(document, path, "")
    flat: dict[str, Any] = {}
    for name, value in document.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"{path}: {name} must be a table ([{name}]), not {shown(value)}")
            flat.update({f"{name}.{sub}": item for sub, item in value.items()})
        elif isinstance(value, dict) and name not in KEY_BY_NAME:
            raise InputError(f"{path}: unknown section [{name}]{_hint(name, SECTIONS)}")
        else:
            flat[name] = value
    for name in flat:
        if name not in KEY_BY_NAME:
            section = name.rpartition(".")[0]
            known = [key for key in KEY_BY_NAME if not section or key.rpartition(".")[0] == section]
            raise InputError(f"{path}: unknown key {name}{_hint(name, known)}")
    return flat


def _hint(name: str, known: Iterable[str]) -> str:
    """' (did you mean KEY?)' for the known key whose last part is closest to the name's, or ''."""
    by_last = {key.rpartition(".")[2]: key for key in known}
    close = difflib.get_close_matches(name.rpartition(".")[2], list(by_last), n=1)
    return f" (did you mean {by_last[close[0]]}?)" if close else ""


def _refuse_api_key(value: object, path: Path, prefix: str) -> None:
    if isinstance(value, list):
        for item in value:
            _refuse_api_key(item, path, prefix)
    elif isinstance(value, dict):
        for name, item in value.items():
            dotted = prefix + str(name)
            if str(name).lower() == "api_key":
                raise InputError(f"{path}: {dotted} is not allowed in a config file: put the API key in "
                                 f"the environment ({' or '.join(KEY_VARIABLES)}) or in a file named by "
                                 "api_key_file")
            _refuse_api_key(item, path, dotted + ".")


def _absolute(path: object, base: Path) -> Path:
    return Path(os.path.normpath(base / Path(str(path)).expanduser()))


def _anchored(key: Key, value: Any, base: Path, config: Path | None) -> Any:
    """A path value made absolute against `base`; a relative sqlite file in a config file, too."""
    if key.rule.kind == "path":
        return str(_absolute(value, base))
    if key.rule.kind == "db" and config is not None:
        match = _SQLITE_FILE.fullmatch(value)
        if match and match.group(2) and not match.group(2).startswith(("/", ":memory:", "file:")):
            database = _absolute(match.group(2), base)
            _make_folder(database.parent, config)
            return f"{match.group(1)}{database}{match.group(3) or ''}"
    return value


def _make_folder(folder: Path, config: Path | None) -> None:
    # The state file's folder is created on first use, so cron in a fresh place needs no set-up.
    try:
        folder.mkdir(parents=config is not None, exist_ok=True)
    except OSError as exc:
        where = f" (db in {config})" if config else ""
        raise InputError(f"cannot create {folder} for the state database{where}: {exc.strerror}") from None


def _api_key(given: Mapping[str, Any], env: Mapping[str, str], key_file: str | None,
             key_file_source: str) -> tuple[str, str]:
    """The key and where it came from: --api-key, --api-key-file, the environment, api_key_file."""
    if "api_key" in given:
        return str(given["api_key"]).strip(), COMMAND_LINE
    if key_file and key_file_source == COMMAND_LINE:
        return read_key_file(key_file), f"file {key_file}"
    for variable in KEY_VARIABLES:
        if env.get(variable, "").strip():
            return env[variable].strip(), f"environment {variable}"
    if key_file:
        return read_key_file(key_file), f"file {key_file}"
    return "", DEFAULT


def _value(resolved: Resolved, key: Key) -> Any:
    value: Any = resolved
    for part in key.target.split("."):
        value = getattr(value, part)
    return value


def _text(key: Key, value: Any) -> str:
    if value is None:
        return NOT_SET
    if key.rule.kind == "duration":
        return duration_text(value)
    if key.rule.kind in ("integer", "number"):
        return number_text(value)
    return str(value)

