"""The one frozen settings object, and the table of every setting: its key, variable, check and default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cftrunner.config.run_options import DEFAULT_MAX_TOKENS, DEFAULT_SCORE_THRESHOLD, DEFAULT_TEMPERATURE
from cftrunner.config.values import Key, Rule
from cftrunner.judge import DEFAULT_JUDGE_MODEL
from cftrunner.retry import RetryPolicy

DEFAULT_BASE_URL = "https://studio.premai.io"
DEFAULT_DB = "sqlite:///state/cftrunner.db"
KEY_VARIABLES = ("API_KEY", "PREMAI_API_KEY")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
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
    poll_first: float = 0.1
    poll_factor: float = 2.0
    # On SQLite, how long a write waits for other threads' writes to share its commit once
    # nobody else is waiting to (0: only those already waiting share it; see store/batches.py).
    commit_window: float = 0.0
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
    # Where log events go besides stderr (which then keeps warnings and errors), and in which
    # format (None: text on a terminal, JSON lines off one and in the file).
    log_file: str | None = None
    log_format: str | None = None
    # After each start, resume, tick and cancel: the Prometheus text file written (None: none),
    # and how webhook notifications go out (service/notify.py): each POST's timeout, the wait
    # before the first retry (doubling, up to an hour), and when an undelivered one is given up.
    metrics_file: str | None = None
    notify_timeout: float = 5.0
    notify_retry_delay: float = 60.0
    notify_give_up: float = 86400.0

    @property
    def item_workers(self) -> int:
        """Items worked on at once: a quarter more than the requests allowed in flight, so that
        while some items store what they got, the others' requests keep every slot busy. One
        request at a time stays one item at a time."""
        return self.concurrency + -(-self.concurrency // 4) if self.concurrency > 1 else 1


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
    _setting("db", "settings.db_url", Rule("db", example=DEFAULT_DB), "CFTRUNNER_DB"),
    _setting("base_url", "settings.base_url", Rule("url"), "CFTRUNNER_BASE_URL"),
    Key("api_key_file", "api_key_file", PATH, None),
    Key("log_level", "log_level", Rule("choice", choices=LOG_LEVELS), "info", "CFTRUNNER_LOG_LEVEL"),
    _setting("log_file", "settings.log_file", PATH, "CFTRUNNER_LOG_FILE"),
    _setting("log_format", "settings.log_format", Rule("choice", choices=LOG_FORMATS),
             "CFTRUNNER_LOG_FORMAT"),
    _setting("metrics_file", "settings.metrics_file", PATH, "CFTRUNNER_METRICS_FILE"),
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
    _setting("timeouts.commit_window", "settings.commit_window", NOT_NEGATIVE,
             "CFTRUNNER_COMMIT_WINDOW"),
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
    Key("judge.calibration", "cycle.calibration", PATH, None),
    Key("gate.min_traces", "cycle.gate_min_traces", Rule("integer", 0), 0),
    Key("gate.min_below_threshold", "cycle.gate_min_below_threshold", Rule("integer", 0), 0),
    Key("gate.score_threshold", "cycle.score_threshold", Rule("number", 0, 1),
        DEFAULT_SCORE_THRESHOLD),
    Key("gate.max_mean_score", "cycle.gate_max_mean_score", Rule("number", 0, 1), None),
    Key("gate.token_budget", "cycle.token_budget", Rule("integer", 1), None,
        "CFTRUNNER_TOKEN_BUDGET"),
    Key("gate.max_judge_error", "cycle.gate_max_judge_error", Rule("number", 0, 1), None),
    Key("notify.webhook_url", "cycle.notify_webhook_url", Rule("url", exact=True), None,
        "CFTRUNNER_NOTIFY_WEBHOOK_URL"),
    _setting("notify.timeout", "settings.notify_timeout", POSITIVE),
    _setting("notify.retry_delay", "settings.notify_retry_delay", Rule("duration", 0)),
    _setting("notify.give_up", "settings.notify_give_up", Rule("duration", 0)),
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

