"""The one frozen settings object, resolved from the command line, then the environment, then defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cftrunner.exceptions import InputError
from cftrunner.retry import RetryPolicy

DEFAULT_BASE_URL = "https://studio.premai.io"
DEFAULT_DB = "sqlite:///state/cftrunner.db"
KEY_VARIABLES = ("API_KEY", "PREMAI_API_KEY")


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
    judge_temperature: float = 0.1
    poll_interval: float = 5.0
    # Bounds on waiting within one invocation; past them the run stops intact and resume goes on.
    processing_timeout: float = 1800.0
    recs_timeout: float = 1800.0
    # How far before our own clock's intent time a remote record may be dated and still be ours.
    reconcile_skew: float = 300.0
    # After an unknown outcome, give the server this long to finish what it may still be doing
    # before reading its state, so that a slow request is not mistaken for a lost one. Counted
    # from the end of the attempt (or from sending it, after a crash).
    reconcile_settle: float = 15.0
    reconcile_max_pages: int = 500
    # A run's lease lasts this long unless renewed; another host takes over only after it.
    lease_seconds: float = 60.0
    # On SIGTERM/SIGINT, how long the request in flight may take before the process exits anyway.
    shutdown_grace: float = 30.0


# Tunables read from the environment (the config file of a later version holds them too).
TUNABLES: dict[str, tuple[str, type]] = {
    "CFTRUNNER_POLL_INTERVAL": ("poll_interval", float),
    "CFTRUNNER_CONNECT_TIMEOUT": ("connect_timeout", float),
    "CFTRUNNER_READ_TIMEOUT": ("read_timeout", float),
    "CFTRUNNER_PROCESSING_TIMEOUT": ("processing_timeout", float),
    "CFTRUNNER_RECS_TIMEOUT": ("recs_timeout", float),
    "CFTRUNNER_JUDGE_ATTEMPTS": ("judge_attempts", int),
    "CFTRUNNER_RECONCILE_SETTLE": ("reconcile_settle", float),
    "CFTRUNNER_TRACE_SHAPE": ("trace_shape", str),
    "CFTRUNNER_MAX_ATTEMPTS": ("retry.max_attempts", int),
    "CFTRUNNER_RETRY_BASE_DELAY": ("retry.base_delay", float),
    "CFTRUNNER_RETRY_MAX_DELAY": ("retry.max_delay", float),
}


def tunables_from_env(settings: Settings, env: Mapping[str, str] = os.environ) -> Settings:
    """Apply the CFTRUNNER_* tunables present in the environment; a bad value is an InputError."""
    top: dict[str, Any] = {}
    retry: dict[str, Any] = {}
    for variable, (name, kind) in TUNABLES.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise InputError(f"{variable}={raw!r} is not {'an integer' if kind is int else 'a number'}"
                             ) from None
        if kind is not str and value <= 0:
            raise InputError(f"{variable} must be positive, not {raw}")
        if name.startswith("retry."):
            retry[name.removeprefix("retry.")] = value
        else:
            top[name] = value
    if top.get("trace_shape", settings.trace_shape) not in ("tutorial", "batch"):
        raise InputError("CFTRUNNER_TRACE_SHAPE must be 'tutorial' or 'batch'")
    try:
        return replace(settings, **top, retry=replace(settings.retry, **retry))
    except ValueError as exc:
        raise InputError(str(exc)) from None


def resolve_api_key(explicit: str | None, key_file: str | None,
                    env: Mapping[str, str] = os.environ) -> str:
    """The API key from --api-key, --api-key-file, API_KEY or PREMAI_API_KEY; '' when none."""
    if explicit:
        return explicit.strip()
    if key_file:
        try:
            return Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
    for name in KEY_VARIABLES:
        if env.get(name, "").strip():
            return env[name].strip()
    return ""


def resolve_db_url(explicit: str | None, env: Mapping[str, str] = os.environ) -> str:
    url = explicit or env.get("CFTRUNNER_DB") or DEFAULT_DB
    if url == DEFAULT_DB:
        # The default home of the state file is created on first use, so cron in a fresh
        # working directory needs no set-up.
        Path("state").mkdir(exist_ok=True)
    return url


def resolve_base_url(explicit: str | None, env: Mapping[str, str] = os.environ) -> str:
    url = (explicit or env.get("CFTRUNNER_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"the base URL must start with http:// or https://, not {url!r}")
    return url
