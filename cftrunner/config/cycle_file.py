"""The cycle file, cftrunner.toml: finding it, reading it, and its [[cycles]] entries, checked.

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
    metrics_file = "/var/lib/node_exporter/textfile/cftrunner.prom"  # after each start, resume,
                                       # tick and cancel: a Prometheus text file (default: none)

    [retry]
    max_attempts = 6                   # int >= 1: tries per request, the first included
    base_delay = 0.5                   # seconds, >= 0
    max_delay = 30                     # >= 0
    max_retry_after = 300              # >= 0: a longer Retry-After stops the run instead

    [timeouts]                         # seconds, all > 0
    connect = 10
    read = 120
    poll_interval = 5                  # waits on the platform look again after poll_first,
    poll_first = 0.1                   # then poll_factor times later each time, up to
    poll_factor = 2                    # poll_interval (training_poll for training); factor >= 1
    commit_window = 0                  # >= 0, SQLite: a write waits for others to share a commit
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
    calibration = "calibration.jsonl"  # answers whose right score is known, judged every cycle:
                                       # {"prompt", "answer", "expected" 0..1} a line (default: none)

    [gate]                             # checked before the snapshot; a cycle that fails ends SKIPPED
    min_traces = 0                     # int >= 0: traces added to the dataset, at least
    min_below_threshold = 0            # int >= 0: of which scored below score_threshold, at least
    score_threshold = 0.5              # 0..1
    max_mean_score = 0.9               # 0..1: their mean score must not be above it (default: none)
    token_budget = 2000000             # int >= 1: tokens of the cycle's completions (default: none);
                                       # once used up, no more generating or judging
    max_judge_error = 0.15             # 0..1: the judge's mean absolute error on judge.calibration,
                                       # at most (default: none)

    [notify]                           # see "Notifications and metrics" in the README
    webhook_url = "https://hooks.example.com/T0/B0/x"  # a JSON POST when a run ends LAUNCHED,
                                       # FAILED, SKIPPED, CANCELLED, TRAINED, PROMOTED, NOT_PROMOTED,
                                       # TRAIN_FAILED, or the API refuses the key (default: none)
    timeout = 5                        # seconds, > 0: each POST's connect and read timeout
    retry_delay = "1m"                 # >= 0: the wait before the first retry; doubles, up to 1h
    give_up = "24h"                    # >= 0: one still undelivered this long after is given up

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
judge.structured_output, judge.calibration, every gate key and notify.webhook_url) and `name`;
those the entry does not set it inherits from the top level of the file, the environment or the
command line, resolved as for one cycle. An entry holding another key is refused, naming the file,
the entry (its number from 1, and its name) and the key.

Each setting is then resolved from the command line, the environment, this file or a default
(`config.resolution`).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cftrunner.config.cycle import CYCLE_KEYS, Cycle, cycle_from, cycle_name
from cftrunner.config.settings import KEY_BY_NAME, KEY_VARIABLES, TEXT
from cftrunner.config.values import Key, shown
from cftrunner.exceptions import InputError

DEFAULT_FILE = "cftrunner.toml"
CONFIG_VARIABLE = "CFTRUNNER_CONFIG"
SECTIONS = ("retry", "timeouts", "judge", "gate", "notify", "api")
CYCLES = "cycles"
NAME = Key("name", "cycle.name", TEXT, None)  # a [[cycles]] entry's own, never inherited
ENTRY_SOURCE = ", [[cycles]] entry "  # in "file /abs/path, [[cycles]] entry N"
_SQLITE_FILE = re.compile(r"(sqlite(?:\+\w+)?:///)([^?]*)(\?.*)?", re.DOTALL)


def locate(given: Mapping[str, Any], env: Mapping[str, str], here: Path) -> Path | None:
    """The file named by --config, else CFTRUNNER_CONFIG, else cftrunner.toml in `here` if there
    is one; InputError for a named file that does not exist."""
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


def read_file(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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


def entry_cycles(config: Path, entries: list[dict[str, Any]], values: Mapping[str, Any],
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
            own[dotted] = anchored(key, key.check(value, text=False, label=f"{origin}: {dotted}"),
                                   config.parent, config)
        name = own.pop(NAME.name, None)
        cycle = cycle_from({**values, **own}, name, origin)
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


def anchored(key: Key, value: Any, base: Path, config: Path | None) -> Any:
    """A path value made absolute against `base`; a relative sqlite file in a config file, too."""
    if key.rule.kind == "path":
        return str(_absolute(value, base))
    if key.rule.kind == "db" and config is not None:
        match = _SQLITE_FILE.fullmatch(value)
        if match and match.group(2) and not match.group(2).startswith(("/", ":memory:", "file:")):
            database = _absolute(match.group(2), base)
            make_state_folder(database.parent, config)
            return f"{match.group(1)}{database}{match.group(3) or ''}"
    return value


def make_state_folder(folder: Path, config: Path | None) -> None:
    """Create the state database's folder; `config`, the file whose db it is (None: the default)."""
    # The state file's folder is created on first use, so cron in a fresh place needs no set-up;
    # for its owner only, as the state file is.
    try:
        folder.mkdir(mode=0o700, parents=config is not None, exist_ok=True)
    except OSError as exc:
        where = f" (db in {config})" if config else ""
        raise InputError(f"cannot create {folder} for the state database{where}: {exc.strerror}") from None
