"""Each setting resolved from the command line, the environment, the cycle file or a default, and the API key.

Precedence: command line > environment > file > default. Integers are accepted where numbers are wanted;
booleans and strings never are. The key comes from --api-key, --api-key-file, API_KEY or PREMAI_API_KEY,
or the file named by `api_key_file`, in that order; a config file holding `api_key` anywhere is refused.
A key file that is empty is refused; one that group or others may read is used, with a warning
(`Resolved.notices`, logged by the caller once logging is set up).
Environment variables: CFTRUNNER_CONFIG, CFTRUNNER_DB, CFTRUNNER_BASE_URL, CFTRUNNER_LOG_LEVEL,
CFTRUNNER_INTERVAL and the variables named in `settings.KEYS`, checked like the file. An unknown key, a
wrong type or an impossible value is one InputError naming the file (or variable) and the dotted key.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cftrunner.config.cycle import CYCLE_KEYS, Cycle, cycle_from
from cftrunner.config.cycle_file import anchored, entry_cycles, locate, make_state_folder, read_file
from cftrunner.config.settings import KEY_VARIABLES, KEYS, Settings, apply
from cftrunner.config.values import shown
from cftrunner.exceptions import InputError

COMMAND_LINE = "command line"
DEFAULT = "default"
CLI_KEYS = frozenset({key.name for key in KEYS} | {"api_key", "config"})
# Something to warn of once logging is set up, which needs the settings resolved first: an event and
# its fields.
Notice = tuple[str, dict[str, str]]


@dataclass(frozen=True)
class Resolved:
    """Every setting, resolved, and where each came from."""

    settings: Settings
    cycles: tuple[Cycle, ...]  # one per [[cycles]] entry, in the file's order; else the one cycle
    log_level: str
    config_path: str | None  # the file actually read
    # Dotted key -> "command line", "environment VARIABLE", "file /abs/path" or "default"; for
    # the per-cycle keys, the first cycle's (with "file /abs/path, [[cycles]] entry N").
    sources: dict[str, str]
    api_key_file: str | None = None  # an absolute path
    cycle_sources: tuple[dict[str, str], ...] = ()  # per cycle, the sources of its per-cycle keys
    notices: tuple[Notice, ...] = ()  # warnings for the caller to log

    @property
    def cycle(self) -> Cycle:
        """The only cycle, or the first of several."""
        return self.cycles[0]


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
    config = locate(given, env, here)
    in_file, entries = read_file(config) if config else ({}, [])
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        if key.name in given:
            value = key.check(given[key.name], text=True, label="--" + key.name.replace("_", "-"))
            values[key.name] = anchored(key, value, here, None)
            sources[key.name] = COMMAND_LINE
        elif key.env and env.get(key.env):
            values[key.name] = key.check(env[key.env], text=True, label=key.env)
            sources[key.name] = f"environment {key.env}"
        elif config and key.name in in_file:
            value = key.check(in_file[key.name], text=False, label=f"{config}: {key.name}")
            values[key.name] = anchored(key, value, config.parent, config)
            sources[key.name] = f"file {config}"
        else:
            values[key.name], sources[key.name] = key.default, DEFAULT
    if sources["db"] == DEFAULT:  # sqlite:///state/cftrunner.db, relative to the working directory
        make_state_folder(here / "state", None)
    api_key, sources["api_key"], key_file = _api_key(given, env, values["api_key_file"],
                                                     sources["api_key_file"])
    notices = [] if key_file is None else _key_file_notices(key_file)
    inherited = {key.name: sources[key.name] for key in CYCLE_KEYS}
    if config and entries:
        cycles = entry_cycles(config, entries, values, inherited)
    else:
        cycles = [(cycle_from(values), inherited)]
    return Resolved(settings=apply(Settings(api_key=api_key), values),
                    cycles=tuple(cycle for cycle, _ in cycles), log_level=values["log_level"],
                    config_path=str(config) if config else None, sources=sources | cycles[0][1],
                    api_key_file=values["api_key_file"],
                    cycle_sources=tuple(cycle_sources for _, cycle_sources in cycles),
                    notices=tuple(notices))


def select(resolved: Resolved, name: str | None) -> tuple[Cycle, ...]:
    """The cycle named `name` (as tick prints it), or every cycle when None; InputError for a
    name no cycle has."""
    if name is None:
        return resolved.cycles
    chosen = tuple(cycle for cycle in resolved.cycles if cycle.title == name)
    if not chosen:
        raise InputError(f"no cycle named {shown(name)}; the cycles are {names(resolved)}")
    return chosen


def names(resolved: Resolved) -> str:
    """The cycles' names, quoted and separated by commas, for messages."""
    return ", ".join(shown(cycle.title) for cycle in resolved.cycles)


def _api_key(given: Mapping[str, Any], env: Mapping[str, str], key_file: str | None,
             key_file_source: str) -> tuple[str, str, str | None]:
    """The key, where it came from (--api-key, --api-key-file, the environment, api_key_file),
    and the key file it was read from, if it was."""
    if "api_key" in given:
        return str(given["api_key"]).strip(), COMMAND_LINE, None
    if key_file and key_file_source == COMMAND_LINE:
        return read_key_file(key_file), f"file {key_file}", key_file
    for variable in KEY_VARIABLES:
        if env.get(variable, "").strip():
            return env[variable].strip(), f"environment {variable}", None
    if key_file:
        return read_key_file(key_file), f"file {key_file}", key_file
    return "", DEFAULT, None


def _key_file_notices(key_file: str) -> list[Notice]:
    """A warning when others than its owner may read the key file; the key is used all the same."""
    mode = key_file_mode_if_loose(key_file)
    if mode is None:
        return []
    return [("api_key_file_permissions",
             {"path": key_file, "mode": f"{mode:04o}",
              "reason": f"group or others may read the API key file; chmod 600 {key_file}"})]


def read_key_file(path: str) -> str:
    """The API key in the file at `path`; InputError when it cannot be read or is empty."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read the API key file {path}: {reason}") from None
    if not key:
        # Named, so it is not taken for a key missing from the environment.
        raise InputError(f"the API key file {path} is empty")
    return key


def key_file_mode_if_loose(path: str) -> int | None:
    """The key file's permission bits when its group or others may read it (as ssh refuses for
    a private key); None when only its owner may, or when it cannot be told."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & (stat.S_IRGRP | stat.S_IROTH) else None
