"""The one frozen settings object, resolved from the command line, then the environment, then defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    reconcile_max_pages: int = 500


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
