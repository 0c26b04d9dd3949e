"""The config file, and each setting resolved from the command line, the environment, the file or a default.

`--config FILE` names the file (else CFTRUNNER_CONFIG, else `cftrunner.toml` in the working directory if
there is one). It is TOML and may hold every setting but the API key::

    # the cycle
    project_id = "..."
    model_alias = "my-model-v3"
    prompts = "prompts.json"           # a file, a folder or a glob ("incoming/*.jsonl"); relative
                                       # paths are relative to the config file's folder
    judge_model = "claude-4.5-sonnet"
    judge_prompt = "judge.txt"         # the judge prompt template, with {prompt} and {answer}
                                       # placeholders (default: the built-in one)
    split_percentage = 80              # int 1..99
    interval = "24h"                   # how often tick starts a new cycle: "90s", "30m", "24h", "7d"
                                       # or a number of seconds; > 0
    failed_retry_interval = "1h"       # after a FAILED cycle, tick waits this long before another; >= 0
    prompts_per_cycle = 500            # int >= 1: prompts a tick's run takes at most (default: all new)
    min_new_prompts = 1                # int >= 1: fewer unused prompts than this, and the cycle is SKIPPED
    reuse_after = "never"              # a prompt a cycle used may be taken again after this, e.g. "90d"
    prioritise = "oldest"              # "oldest" (files oldest first) | "weak" (weakest tags first)
    follow = false                     # after the launch, follow the job to TRAINED / TRAIN_FAILED
    promote = false                    # then compare the new models on holdout_prompts (implies follow)
    holdout_prompts = "holdout.json"   # prompts never added to the dataset; needed by promote
    promote_margin = 0.0               # 0..1: a new model may score this much lower and still win
    regression = false                 # after a promotion, ask the cycle's earlier weak prompts
                                       # again and report each fixed or still weak (needs promote)
    unload_losers = false              # after the decision, unload the new models that lost
                                       # (needs promote)
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
    poll_interval = 5                  # waits on the platform look again after poll_first,
    poll_first = 0.25                  # then poll_factor times later each time, up to
    poll_factor = 2                    # poll_interval (training_poll for training); factor >= 1
    processing = 1800                  # waiting for the platform's corrections, per invocation
    recommendations = 1800             # waiting for recommendations, per invocation
    reconcile_settle = 15              # >= 0: the first look at remote state after a lost answer
    reconcile_wait = "2m"              # >= 0: looking again, per invocation, while it cannot tell
    reconcile_give_up = "24h"          # >= 0: then the effect waits for `cftrunner settle`
    lease = 60
    shutdown_grace = 30
    training = "0s"                    # following a job, per invocation (0: read it once); >= 0
    training_poll = "60s"              # between two reads of the job within that; > 0
    model_load = "5m"                  # before promotion, waiting for new models to run for
                                       # inference, per invocation (0: look once); >= 0
    model_give_up = "2h"               # a new model still not running this long after the first
                                       # look is left out of the comparison; >= 0

    [judge]
    attempts = 3                       # int >= 1: judge answers asked for per item
    temperature = 0.1                  # 0..2
    max_tokens = 4096                  # int >= 1: the judge answer's length limit
    structured_output = true           # ask for JSON by schema (response_format) where supported

    [gate]                             # checked before the snapshot; a cycle that fails ends SKIPPED
    min_traces = 0                     # int >= 0: traces added to the dataset, at least
    min_below_threshold = 0            # int >= 0: of which scored below score_threshold, at least
    score_threshold = 0.5              # 0..1
    max_mean_score = 0.9               # 0..1: their mean score must not be above it (default: none)
    token_budget = 2000000             # int >= 1: tokens of the cycle's completions (default: none);
                                       # once used up, no more generating or judging

    [api]
    trace_shape = "tutorial"           # "tutorial" | "batch"
    marker_traces = true               # see "Exactly once" in the README

    [[cycles]]                         # optional, any number: one cycle each, in this order
    name = "support"                   # default "project_id/model_alias"; unique in the file
    project_id = "..."
    model_alias = "support-v2"
    prompts = "support.json"           # relative to the config file's folder, as above
    [cycles.gate]                      # [cycles.judge] and [cycles.gate]: their per-cycle keys
    min_traces = 1000

Without [[cycles]] the file describes one cycle, by its top-level keys. With them, each entry is a
cycle and holds only per-cycle keys (the first twelve above, follow, promote, holdout_prompts,
promote_margin, regression, unload_losers, judge.temperature, judge.max_tokens,
judge.structured_output and every gate key) and `name`; those the entry does not set it inherits from
the top level of the file, the environment or the command line, resolved as for one cycle. An entry
holding another key is refused, naming the file, the entry (its number from 1, and its name) and the key.

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

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cftrunner.exceptions import InputError
from cftrunner.judge import DEFAULT_JUDGE_MODEL, read_template
from cftrunner.prompt_source import Rules
from cftrunner.prompts import iter_prompts
from cftrunner.run_config import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_TEMPERATURE,
    DEFAULT_TEMPLATE,
    GateConfig,
    JudgeConfig,
    LoopConfig,
)
from cftrunner.settings import (
    DEFAULT_FAILED_RETRY_INTERVAL,
    DEFAULT_INTERVAL,
    DEFAULT_SPLIT_PERCENTAGE,
    KEY_BY_NAME,
    KEY_VARIABLES,
    KEYS,
    TEXT,
    Key,
    Settings,
    apply,
    duration_text,
    key_file_mode_if_loose,
    number_text,
    read_key_file,
    shown,
)

DEFAULT_FILE = "cftrunner.toml"
CONFIG_VARIABLE = "CFTRUNNER_CONFIG"
COMMAND_LINE = "command line"
DEFAULT = "default"
NOT_SET = "(not set)"
SECTIONS = ("retry", "timeouts", "judge", "gate", "api")
CYCLES = "cycles"
CLI_KEYS = frozenset({key.name for key in KEYS} | {"api_key", "config"})
CYCLE_KEYS = tuple(key for key in KEYS if key.target.startswith("cycle."))
NAME = Key("name", "cycle.name", TEXT, None)  # a [[cycles]] entry's own, never inherited
ENTRY_SOURCE = ", [[cycles]] entry "  # in "file /abs/path, [[cycles]] entry N"
# Something to warn of once logging is set up, which needs the settings resolved first: an event and
# its fields.
Notice = tuple[str, dict[str, str]]
_SQLITE_FILE = re.compile(r"(sqlite(?:\+\w+)?:///)([^?]*)(\?.*)?", re.DOTALL)


def cycle_name(project_id: str, model_alias: str, name: str | None = None) -> str:
    """A cycle's name, the unit tick locks and runs.cycle holds: its own, else "project_id/model_alias"."""
    return name or f"{project_id}/{model_alias}"


@dataclass(frozen=True)
class Cycle:
    """What `start` and `tick` need besides Settings; None where nothing set it."""

    name: str | None = None  # None: named "project_id/model_alias"
    project_id: str | None = None
    model_alias: str | None = None
    prompts: str | None = None  # an absolute path
    judge_model: str = DEFAULT_JUDGE_MODEL
    split_percentage: int = DEFAULT_SPLIT_PERCENTAGE
    interval: float = DEFAULT_INTERVAL  # seconds between the starts of two cycles
    failed_retry_interval: float = DEFAULT_FAILED_RETRY_INTERVAL  # seconds of rest after a FAILED one
    # How tick takes prompts from the source (prompt_source.py).
    prompts_per_cycle: int | None = None
    min_new_prompts: int = 1
    reuse_after: float | None = None  # seconds; None: never
    prioritise: str = "oldest"
    judge_prompt: str | None = None  # an absolute path; None for the built-in template
    judge_temperature: float = DEFAULT_TEMPERATURE
    judge_max_tokens: int = DEFAULT_MAX_TOKENS
    structured_output: bool = True
    gate_min_traces: int = 0
    gate_min_below_threshold: int = 0
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    gate_max_mean_score: float | None = None
    token_budget: int | None = None
    follow: bool = False
    promote: bool = False
    holdout_prompts: str | None = None  # an absolute path
    promote_margin: float = 0.0
    regression: bool = False  # after a promotion, ask the earlier weak prompts again
    unload_losers: bool = False  # after the decision, unload the new models that lost
    # Where a [[cycles]] entry's cycle was described ("FILE: [[cycles]] entry N (NAME)"), for messages.
    origin: str | None = field(default=None, compare=False)

    @property
    def title(self) -> str:
        """The cycle's name as tick prints it and --cycle takes it; "?" for a part not set."""
        return cycle_name(self.project_id or "?", self.model_alias or "?", self.name)

    def judge(self) -> JudgeConfig:
        """The judge a run of this cycle uses; the template file is read (and checked) here."""
        template = read_template(self.judge_prompt) if self.judge_prompt else DEFAULT_TEMPLATE
        return JudgeConfig(template=template, temperature=self.judge_temperature,
                           max_tokens=self.judge_max_tokens,
                           structured_output=self.structured_output,
                           template_source=self.judge_prompt)

    def loop(self) -> LoopConfig:
        """What the cycle's runs do after the launch; the held-out prompts are read here."""
        where = f"{self.origin}: " if self.origin else ""
        if self.promote and not self.holdout_prompts:
            raise InputError(f"{where}promote = true needs holdout_prompts, the prompts file the "
                             "models are compared on")
        if self.regression and not self.promote:
            raise InputError(f"{where}regression = true needs promote = true: the weak prompts "
                             "are asked again of the promoted model")
        if self.unload_losers and not self.promote:
            raise InputError(f"{where}unload_losers = true needs promote = true: the losers are "
                             "the new models the promotion did not choose")
        holdout = tuple(iter_prompts(self.holdout_prompts)) if self.promote and \
            self.holdout_prompts else ()
        return LoopConfig(follow=self.follow or self.promote, promote=self.promote,
                          holdout=holdout, holdout_source=self.holdout_prompts,
                          margin=self.promote_margin, regression=self.regression,
                          unload_losers=self.unload_losers)

    def rules(self) -> Rules:
        """How tick takes this cycle's prompts from its source."""
        return Rules(per_cycle=self.prompts_per_cycle, reuse_after=self.reuse_after,
                     prioritise=self.prioritise, neutral_score=self.score_threshold)

    def gate(self) -> GateConfig:
        return GateConfig(min_traces=self.gate_min_traces,
                          min_below_threshold=self.gate_min_below_threshold,
                          score_threshold=self.score_threshold,
                          max_mean_score=self.gate_max_mean_score, token_budget=self.token_budget)


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
    config = _config_path(given, env, here)
    in_file, entries = _read(config) if config else ({}, [])
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
    api_key, sources["api_key"], key_file = _api_key(given, env, values["api_key_file"],
                                                     sources["api_key_file"])
    notices = [] if key_file is None else _key_file_notices(key_file)
    inherited = {key.name: sources[key.name] for key in CYCLE_KEYS}
    if config and entries:
        cycles = _entries(config, entries, values, inherited)
    else:
        cycles = [(_cycle(values), inherited)]
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


def describe(resolved: Resolved) -> list[tuple[str, str, str]]:
    """(dotted key, value as text, source) for every setting in the file's order; the key redacted."""
    rows: list[tuple[str, str, str]] = []
    for key in KEYS:
        rows.append((key.name, _text(key, _value(resolved, key)), resolved.sources[key.name]))
        if key.name == "api_key_file":
            rows.append(("api_key", redact(resolved.settings.api_key), resolved.sources["api_key"]))
    return rows


def describe_cycles(resolved: Resolved) -> list[str]:
    """One line per [[cycles]] entry, "cycle NAME: KEY = VALUE, ..." for the keys it sets itself;
    none without [[cycles]]."""
    lines: list[str] = []
    for cycle, cycle_sources in zip(resolved.cycles, resolved.cycle_sources, strict=True):
        if cycle.origin is None:
            continue
        own = [f"{key.name} = {_text(key, getattr(cycle, key.target.removeprefix('cycle.')))}"
               for key in CYCLE_KEYS if ENTRY_SOURCE in cycle_sources[key.name]]
        lines.append(f"cycle {cycle.title}: {', '.join(own) or 'every key inherited'}")
    return lines


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


def _read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The file's top-level values by dotted key, unchecked, and its [[cycles]] tables as written;
    InputError for what no key can accept."""
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
    entries = document.pop(CYCLES, [])
    if not (isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries)):
        raise InputError(f"{path}: {CYCLES} must be an array of tables ([[{CYCLES}]]), "
                         f"not {shown(entries)}")
    flat = _flatten(document, str(path), "")
    for name in flat:
        if name not in KEY_BY_NAME:
            raise InputError(f"{path}: unknown key {name}{_hint(name, [*KEY_BY_NAME, CYCLES])}")
    return flat, entries


def _flatten(table: Mapping[str, Any], label: str, within: str) -> dict[str, Any]:
    """A table's values by dotted key, its sections' too; InputError for a section that is not a
    table, or that no key belongs to. `within` prefixes section names in messages ("cycles.")."""
    flat: dict[str, Any] = {}
    for name, value in table.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"{label}: {name} must be a table ([{within}{name}]), "
                                 f"not {shown(value)}")
            flat.update({f"{name}.{sub}": item for sub, item in value.items()})
        elif isinstance(value, dict) and name not in KEY_BY_NAME:
            hint = _hint(name, [*SECTIONS, *([] if within else [CYCLES])])
            raise InputError(f"{label}: unknown section [{within}{name}]{hint}")
        else:
            flat[name] = value
    return flat


def _cycle(values: Mapping[str, Any], name: str | None = None, origin: str | None = None) -> Cycle:
    return Cycle(name=name, origin=origin, **{key.target.removeprefix("cycle."): values[key.name]
                                              for key in CYCLE_KEYS})


def _entries(config: Path, entries: list[dict[str, Any]], values: Mapping[str, Any],
             inherited: Mapping[str, str]) -> list[tuple[Cycle, dict[str, str]]]:
    """Each [[cycles]] entry's cycle, the keys it does not set taken from `values`, with the
    sources of its keys; InputError for a key that is not per-cycle, or a name used twice."""
    cycles: list[tuple[Cycle, dict[str, str]]] = []
    taken: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        origin = f"{config}: [[{CYCLES}]] entry {number}{_entry_name(entry, values)}"
        own: dict[str, Any] = {}
        for dotted, value in _flatten(entry, origin, f"{CYCLES}.").items():
            key = NAME if dotted == NAME.name else KEY_BY_NAME.get(dotted)
            if key is None:
                section = dotted.rpartition(".")[0]
                known = [NAME.name, *(key.name for key in CYCLE_KEYS
                                      if not section or key.name.rpartition(".")[0] == section)]
                raise InputError(f"{origin}: unknown key {dotted}{_hint(dotted, known)}")
            if key is not NAME and key not in CYCLE_KEYS:
                raise InputError(f"{origin}: {dotted} is not a per-cycle key; set it at the top "
                                 "level of the file")
            own[dotted] = _anchored(key, key.check(value, text=False, label=f"{origin}: {dotted}"),
                                    config.parent, config)
        name = own.pop(NAME.name, None)
        cycle = _cycle({**values, **own}, name, origin)
        if name or (cycle.project_id and cycle.model_alias):
            if cycle.title in taken:
                raise InputError(f"{origin}: name {shown(cycle.title)} is entry {taken[cycle.title]}'s "
                                 "too; give each cycle its own name")
            taken[cycle.title] = number
        source = f"file {config}{ENTRY_SOURCE}{number}"
        cycles.append((cycle, {**inherited, **{dotted: source for dotted in own}}))
    return cycles


def _entry_name(entry: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    """" (NAME)" for an entry whose name (its own or the default one) is known before checking."""
    name = entry.get(NAME.name)
    if not isinstance(name, str):
        parts = [entry.get(key, values[key]) for key in ("project_id", "model_alias")]
        if not all(isinstance(part, str) and part.strip() for part in parts):
            return ""
        name = cycle_name(*(part.strip() for part in parts))
    return f" ({name.strip()})" if name.strip() else ""


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
    # The state file's folder is created on first use, so cron in a fresh place needs no set-up;
    # for its owner only, as the state file is.
    try:
        folder.mkdir(mode=0o700, parents=config is not None, exist_ok=True)
    except OSError as exc:
        where = f" (db in {config})" if config else ""
        raise InputError(f"cannot create {folder} for the state database{where}: {exc.strerror}") from None


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


def _value(resolved: Resolved, key: Key) -> Any:
    value: Any = resolved
    for part in key.target.split("."):
        value = getattr(value, part)
    return value


def _text(key: Key, value: Any) -> str:
    if value is None:
        return "never" if key.rule.never else NOT_SET
    if key.rule.kind == "duration":
        return duration_text(value)
    if key.rule.kind == "boolean":
        return shown(value)
    if key.rule.kind in ("integer", "number"):
        return number_text(value)
    return str(value)

