"""The one frozen settings object, and the table of every setting: its key, variable, check and default."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cftrunner.exceptions import InputError
from cftrunner.judge import DEFAULT_JUDGE_MODEL
from cftrunner.retry import RetryPolicy
from cftrunner.run_config import DEFAULT_MAX_TOKENS, DEFAULT_SCORE_THRESHOLD, DEFAULT_TEMPERATURE

DEFAULT_BASE_URL = "https://studio.premai.io"
DEFAULT_DB = "sqlite:///state/cftrunner.db"
KEY_VARIABLES = ("API_KEY", "PREMAI_API_KEY")
LOG_LEVELS = ("debug", "info", "warning", "error")
TRACE_SHAPES = ("tutorial", "batch")
PRIORITIES = ("oldest", "weak")  # prompt_source.ORDERS
DEFAULT_SPLIT_PERCENTAGE = 80
DEFAULT_INTERVAL = 86400.0
DEFAULT_FAILED_RETRY_INTERVAL = 3600.0


@dataclass(frozen=True)
class Settings:
    base_url: str = DEFAULT_BASE_URL
    db_url: str = DEFAULT_DB
    api_key: str = field(default="", repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    trace_shape: str = "tutorial"
    judge_attempts: int = 3
    # Waits on the platform (corrections, recommendations, a model loading, training) look
    # again after poll_first seconds, then each time poll_factor times longer, up to
    # poll_interval (training_poll for training).
    poll_interval: float = 5.0
    poll_first: float = 0.25
    poll_factor: float = 2.0
    # Bounds on waiting within one invocation; past them the run stops intact and resume goes on.
    processing_timeout: float = 1800.0
    recs_timeout: float = 1800.0
    # How far before our own clock's intent time a remote record may be dated and still be ours.
    reconcile_skew: float = 300.0
    # After an unknown outcome, give the server this long to finish what it may still be doing
    # before reading its state, so that a slow request is not mistaken for a lost one. Counted
    # from the end of the attempt (or from sending it, after a crash).
    reconcile_settle: float = 15.0
    # When the remote view has not caught up past a lost request, neither "it happened" nor "it
    # did not" can be told: look again for at most this long per invocation, then stop intact.
    reconcile_wait: float = 120.0
    # After this long with the outcome still unknown, stop looking on our own: the effect waits
    # for a person's `cftrunner settle`. Counted from the last moment it may have been sent.
    reconcile_give_up: float = 86400.0
    reconcile_max_pages: int = 500
    # A run's lease lasts this long unless renewed; another host takes over only after it.
    lease_seconds: float = 60.0
    # On SIGTERM/SIGINT, how long the request in flight may take before the process exits anyway.
    shutdown_grace: float = 30.0
    # Requests in flight at once, at most (see item_workers).
    concurrency: int = 8
    # When nothing the run writes later can show that the trace list caught up past a lost
    # request, write a marker trace that can (never added to the dataset; deleted once done).
    marker_traces: bool = True
    # A ceiling on requests per second across the run; None for none.
    max_rps: float | None = None
    # How long one invocation follows a training job (0: read it once), and how often.
    training_timeout: float = 0.0
    training_poll: float = 60.0
    # Before promotion judges new models, how long one invocation waits for them to run for
    # inference (0: look once), and how long after the first look a model still not running is
    # left out of the comparison.
    model_load_timeout: float = 300.0
    model_give_up: float = 7200.0

    @property
    def item_workers(self) -> int:
        """Items worked on at once: a quarter more than the requests allowed in flight, so that
        while some items store what they got, the others' requests keep every slot busy. One
        request at a time stays one item at a time."""
        return self.concurrency + -(-self.concurrency // 4) if self.concurrency > 1 else 1


Kind = Literal["integer", "number", "duration", "boolean", "choice", "text", "path", "url", "db"]
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DB_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "on": True,
                  "false": False, "0": False, "no": False, "off": False}


@dataclass(frozen=True)
class Rule:
    """Which values a key accepts, and what each becomes."""

    kind: Kind
    low: float | None = None
    high: float | None = None
    above: bool = False  # `low` itself is refused
    choices: tuple[str, ...] = ()
    never: bool = False  # a duration that may be "never" (None)

    @property
    def requirement(self) -> str:
        """What a value must be, to finish "KEY must be ..."."""
        if self.kind in ("integer", "number", "duration"):
            noun = {"integer": "an integer", "number": "a number", "duration": "a duration"}[self.kind]
            if self.low is not None and self.high is not None:
                bound = f" from {number_text(self.low)} to {number_text(self.high)}"
            else:
                bound = f" {'>' if self.above else '>='} {number_text(self.low or 0)}"
            forms = ' ("90s", "30m", "24h", "7d" or a number of seconds)' if self.kind == "duration" else ""
            if self.never:
                forms = forms.replace(" or a number", ", a number").replace(")", ' or "never")')
            return noun + bound + forms
        if self.kind == "boolean":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        return {"text": "a non-empty string", "path": "a non-empty string (a path)",
                "url": "a URL starting with http:// or https://",
                "db": f"an SQLAlchemy URL such as {DEFAULT_DB}"}[self.kind]

    def check(self, value: object, text: bool) -> Any:
        """The setting's value for `value`, or ValueError. `text`: strings may spell numbers."""
        if self.kind in ("integer", "number"):
            if text and isinstance(value, str):
                value = (int if self.kind == "integer" else float)(value)
            if isinstance(value, bool) or not isinstance(value, int | float) or (
                    self.kind == "integer" and not isinstance(value, int)):
                raise ValueError(value)
            return self._bounded(value) if self.kind == "integer" else float(self._bounded(value))
        if self.kind == "boolean":
            if text and isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
                return _BOOLEAN_WORDS[value.strip().lower()]
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if self.kind == "duration":
            if self.never and isinstance(value, str) and value.strip().lower() == "never":
                return None
            if isinstance(value, str):
                value = parse_duration(value)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(value)
            return float(self._bounded(value))
        if not isinstance(value, str) or not value.strip():
            raise ValueError(value)
        if self.kind == "choice":
            if value.strip().lower() not in self.choices:
                raise ValueError(value)
            return value.strip().lower()
        if self.kind == "url":
            url = value.strip().rstrip("/")
            if not re.fullmatch(r"https?://[^/\s]+.*", url):
                raise ValueError(value)
            return url
        if self.kind == "db" and not _DB_URL.match(value.strip()):
            raise ValueError(value)
        return value.strip()

    def _bounded(self, value: float) -> float:
        as_float = float(value)  # OverflowError, a ValueError-like refusal, for an absurd integer
        if not math.isfinite(as_float) or (self.high is not None and value > self.high):
            raise ValueError(value)
        if self.low is not None and (value < self.low or (self.above and value == self.low)):
            raise ValueError(value)
        return value


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "24h", "7d" or "90"; ValueError for anything else."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


def number_text(value: float) -> str:
    """A number as written in a config file: 30 rather than 30.0."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def duration_text(seconds: float) -> str:
    """Seconds in the largest unit that divides them: 86400 -> "1d", 5400 -> "90m"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{number_text(seconds / size)}{unit}"
    return f"{number_text(seconds)}s"


def shown(value: object) -> str:
    """A refused value as the message quotes it: strings in double quotes, tables by name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class Key:
    """One setting: its dotted key in the config file, where its value lands, its rule and default."""

    name: str
    target: str  # "settings.<field>", "settings.retry.<field>", "cycle.<field>", or a Resolved field
    rule: Rule
    default: Any
    env: str | None = None

    def check(self, value: object, *, text: bool, label: str) -> Any:
        """The setting's value; an InputError "LABEL must be ..., not VALUE" if the rule refuses it."""
        try:
            return self.rule.check(value, text)
        except (ValueError, OverflowError):
            raise InputError(f"{label} must be {self.rule.requirement}, not {shown(value)}") from None


_D = Settings()
TEXT = Rule("text")
PATH = Rule("path")
POSITIVE = Rule("number", 0, above=True)
NOT_NEGATIVE = Rule("number", 0)


def _setting(name: str, target: str, rule: Rule, env: str | None = None) -> Key:
    value: Any = _D
    for part in target.split(".")[1:]:
        value = getattr(value, part)
    return Key(name, target, rule, value, env)


# In the config file's order. Settings fields missing here are not meant to be tuned.
KEYS: tuple[Key, ...] = (
    Key("project_id", "cycle.project_id", TEXT, None),
    Key("model_alias", "cycle.model_alias", TEXT, None),
    Key("prompts", "cycle.prompts", PATH, None),
    Key("judge_model", "cycle.judge_model", TEXT, DEFAULT_JUDGE_MODEL),
    Key("judge_prompt", "cycle.judge_prompt", PATH, None, "CFTRUNNER_JUDGE_PROMPT"),
    Key("split_percentage", "cycle.split_percentage", Rule("integer", 1, 99), DEFAULT_SPLIT_PERCENTAGE),
    Key("interval", "cycle.interval", Rule("duration", 0, above=True), DEFAULT_INTERVAL,
        "CFTRUNNER_INTERVAL"),
    Key("failed_retry_interval", "cycle.failed_retry_interval", Rule("duration", 0),
        DEFAULT_FAILED_RETRY_INTERVAL),
    Key("prompts_per_cycle", "cycle.prompts_per_cycle", Rule("integer", 1), None),
    Key("min_new_prompts", "cycle.min_new_prompts", Rule("integer", 1), 1),
    Key("reuse_after", "cycle.reuse_after", Rule("duration", 0, never=True), None),
    Key("prioritise", "cycle.prioritise", Rule("choice", choices=PRIORITIES), "oldest"),
    _setting("db", "settings.db_url", Rule("db"), "CFTRUNNER_DB"),
    _setting("base_url", "settings.base_url", Rule("url"), "CFTRUNNER_BASE_URL"),
    Key("api_key_file", "api_key_file", PATH, None),
    Key("log_level", "log_level", Rule("choice", choices=LOG_LEVELS), "info", "CFTRUNNER_LOG_LEVEL"),
    _setting("retry.max_attempts", "settings.retry.max_attempts", Rule("integer", 1),
             "CFTRUNNER_MAX_ATTEMPTS"),
    _setting("retry.max_rate_limited", "settings.retry.max_rate_limited", Rule("integer", 1),
             "CFTRUNNER_MAX_RATE_LIMITED"),
    _setting("retry.base_delay", "settings.retry.base_delay", NOT_NEGATIVE, "CFTRUNNER_RETRY_BASE_DELAY"),
    _setting("retry.max_delay", "settings.retry.max_delay", NOT_NEGATIVE, "CFTRUNNER_RETRY_MAX_DELAY"),
    _setting("retry.max_retry_after", "settings.retry.max_retry_after", NOT_NEGATIVE),
    _setting("timeouts.connect", "settings.connect_timeout", POSITIVE, "CFTRUNNER_CONNECT_TIMEOUT"),
    _setting("timeouts.read", "settings.read_timeout", POSITIVE, "CFTRUNNER_READ_TIMEOUT"),
    _setting("timeouts.poll_interval", "settings.poll_interval", POSITIVE, "CFTRUNNER_POLL_INTERVAL"),
    _setting("timeouts.poll_first", "settings.poll_first", POSITIVE, "CFTRUNNER_POLL_FIRST"),
    _setting("timeouts.poll_factor", "settings.poll_factor", Rule("number", 1)),
    _setting("timeouts.processing", "settings.processing_timeout", POSITIVE,
             "CFTRUNNER_PROCESSING_TIMEOUT"),
    _setting("timeouts.recommendations", "settings.recs_timeout", POSITIVE, "CFTRUNNER_RECS_TIMEOUT"),
    _setting("timeouts.reconcile_settle", "settings.reconcile_settle", NOT_NEGATIVE,
             "CFTRUNNER_RECONCILE_SETTLE"),
    _setting("timeouts.reconcile_wait", "settings.reconcile_wait", Rule("duration", 0),
             "CFTRUNNER_RECONCILE_WAIT"),
    _setting("timeouts.reconcile_give_up", "settings.reconcile_give_up", Rule("duration", 0),
             "CFTRUNNER_RECONCILE_GIVE_UP"),
    _setting("timeouts.lease", "settings.lease_seconds", POSITIVE, "CFTRUNNER_LEASE_SECONDS"),
    _setting("timeouts.training", "settings.training_timeout", Rule("duration", 0),
             "CFTRUNNER_TRAINING_TIMEOUT"),
    _setting("timeouts.training_poll", "settings.training_poll", Rule("duration", 0, above=True)),
    _setting("timeouts.model_load", "settings.model_load_timeout", Rule("duration", 0),
             "CFTRUNNER_MODEL_LOAD_TIMEOUT"),
    _setting("timeouts.model_give_up", "settings.model_give_up", Rule("duration", 0)),
    _setting("timeouts.shutdown_grace", "settings.shutdown_grace", POSITIVE, "CFTRUNNER_SHUTDOWN_GRACE"),
    _setting("judge.attempts", "settings.judge_attempts", Rule("integer", 1), "CFTRUNNER_JUDGE_ATTEMPTS"),
    Key("follow", "cycle.follow", Rule("boolean"), False, "CFTRUNNER_FOLLOW"),
    Key("promote", "cycle.promote", Rule("boolean"), False),
    Key("holdout_prompts", "cycle.holdout_prompts", PATH, None),
    Key("promote_margin", "cycle.promote_margin", Rule("number", 0, 1), 0.0),
    Key("regression", "cycle.regression", Rule("boolean"), False),
    Key("unload_losers", "cycle.unload_losers", Rule("boolean"), False),
    Key("judge.temperature", "cycle.judge_temperature", Rule("number", 0, 2), DEFAULT_TEMPERATURE),
    Key("judge.max_tokens", "cycle.judge_max_tokens", Rule("integer", 1), DEFAULT_MAX_TOKENS,
        "CFTRUNNER_JUDGE_MAX_TOKENS"),
    Key("judge.structured_output", "cycle.structured_output", Rule("boolean"), True),
    Key("gate.min_traces", "cycle.gate_min_traces", Rule("integer", 0), 0),
    Key("gate.min_below_threshold", "cycle.gate_min_below_threshold", Rule("integer", 0), 0),
    Key("gate.score_threshold", "cycle.score_threshold", Rule("number", 0, 1),
        DEFAULT_SCORE_THRESHOLD),
    Key("gate.max_mean_score", "cycle.gate_max_mean_score", Rule("number", 0, 1), None),
    Key("gate.token_budget", "cycle.token_budget", Rule("integer", 1), None,
        "CFTRUNNER_TOKEN_BUDGET"),
    _setting("api.trace_shape", "settings.trace_shape", Rule("choice", choices=TRACE_SHAPES),
             "CFTRUNNER_TRACE_SHAPE"),
    _setting("api.marker_traces", "settings.marker_traces", Rule("boolean"),
             "CFTRUNNER_MARKER_TRACES"),
    _setting("api.concurrency", "settings.concurrency", Rule("integer", 1, 256),
             "CFTRUNNER_CONCURRENCY"),
    _setting("api.max_rps", "settings.max_rps", POSITIVE, "CFTRUNNER_MAX_RPS"),
)
KEY_BY_NAME = {key.name: key for key in KEYS}

def apply(settings: Settings, values: Mapping[str, Any]) -> Settings:
    """`settings` with the values of checked keys (by dotted name) set; other keys are ignored."""
    top: dict[str, Any] = {}
    retry: dict[str, Any] = {}
    for name, value in values.items():
        target = KEY_BY_NAME[name].target
        if target.startswith("settings.retry."):
            retry[target.removeprefix("settings.retry.")] = value
        elif target.startswith("settings."):
            top[target.removeprefix("settings.")] = value
    return replace(settings, **top, retry=replace(settings.retry, **retry))


def read_key_file(path: str) -> str:
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
