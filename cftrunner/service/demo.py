"""The demo (a whole cycle against an in-process sandbox) and the sandbox server command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cftrunner.config.settings import Settings
from cftrunner.records import Run, RunSpec
from cftrunner.service.runs import start
from cftrunner.views.live import Display, no_display

DEMO_MODEL = "demo-safety-classifier-v1"
DEMO_DB = "sqlite:///state/cftrunner-demo.db"  # in the working directory


def demo(prompts_file: Path, latency: float, db_url: str, on_created: Callable[[str], None],
         display: Display = no_display) -> Run:
    """A whole cycle against an in-process sandbox, kept in the state database at `db_url`
    beside the runs of earlier demos; the run, as it ended."""
    from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, Sandbox

    with Sandbox(api_key=DEFAULT_API_KEY, latency=latency, processing_seconds=0.5) as sandbox:
        settings = Settings(base_url=sandbox.url, db_url=db_url, api_key=DEFAULT_API_KEY,
                            poll_interval=0.2)
        spec = RunSpec(project_id=DEFAULT_PROJECT_ID, model_alias=DEMO_MODEL,
                       prompts_source=str(prompts_file), judge_model="claude-4.5-sonnet")
        return start(settings, spec, on_created, display=display)


def serve_sandbox(*, host: str, port: int, latency: float, error_rate: float, rate_limit: float,
                  retry_after: float, max_rps: float | None, burst: int, drop_rate: float,
                  late_rate: float, late_delay: float, judge_malformed: float,
                  judge_truncated: float, structured_output: bool, list_lag: float,
                  list_lag_uneven: bool, seed: int, judge_drift: float,
                  require_key: str | None, verbose: bool, announce: Callable[[str], None]) -> None:
    from cftrunner.sandbox import DEFAULT_PROJECT_ID, FaultRule, Sandbox

    sandbox = Sandbox(api_key=require_key, latency=latency, seed=seed, rate_limit_rps=max_rps,
                      rate_limit_burst=burst, structured_output=structured_output,
                      list_lag=list_lag, list_lag_uneven=list_lag_uneven,
                      judge_drift=judge_drift)
    rules: list[dict[str, Any]] = [
        {"kind": "status", "status": 429, "retry_after": retry_after, "probability": rate_limit},
        {"kind": "status", "status": 503, "probability": error_rate},
        {"kind": "drop", "probability": drop_rate},
        {"kind": "late", "delay": late_delay, "probability": late_rate},
        {"kind": "malformed", "route": "chat", "judge": True, "probability": judge_malformed},
        {"kind": "truncated", "route": "chat", "judge": True, "probability": judge_truncated},
    ]
    for rule in rules:
        if rule["probability"] > 0:
            sandbox.add_fault(FaultRule(**rule))
    sandbox.serve_forever(host, port, verbose=verbose, on_ready=lambda url: announce(
        f"Prem sandbox on {url}  project {DEFAULT_PROJECT_ID}  (Ctrl-C stops it)"))
