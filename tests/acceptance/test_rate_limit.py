"""Whole `cftrunner start` processes against a sandbox that allows so many requests a second."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, Sandbox
from tests.conftest import Cli, assert_exactly_once, databases, shown_status, write_prompts

pytestmark = pytest.mark.slow

LIMIT = 20.0  # requests a second the sandbox allows, across every route
BURST = 5  # requests it lets through at once; a quarter of a second's worth
PROMPTS = [f"Is this message safe to show, case {i}? 'my bike chain keeps slipping'"
           for i in range(36)]
CONCURRENCY = 8  # eight items in flight could send far more than LIMIT against this sandbox
ITEM_ROUTES = ("chat", "trace_create", "add_to_dataset")


@dataclass(frozen=True)
class Traffic:
    """What the sandbox let through during one run, and what it refused."""

    admitted: list[tuple[float, str]]
    refused: int

    def busy_rate(self) -> float:
        """Requests a second let through while items were in flight: from the first to the last
        request for an item, leaving out the waits for processing and recommendations."""
        items = [at for at, route in self.admitted if route in ITEM_ROUTES]
        busy = [at for at, _ in self.admitted if items[0] <= at <= items[-1]]
        return len(busy) / (items[-1] - items[0])

    def most_in_one_second(self) -> int:
        times = [at for at, _ in self.admitted]
        return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))

    def summary(self) -> str:
        return (f"admitted {len(self.admitted)}, refused {self.refused}, "
                f"busy rate {self.busy_rate():.1f}/s, most in one second "
                f"{self.most_in_one_second()}")


@pytest.fixture
def capacity(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The busy rate this host reaches, right before the test, with no limit worth the name: how
    fast the run's own work (the process, the state database, the sandbox in the test process)
    lets it go. On 2 busy cores, and on PostgreSQL, that can be below the rates the tests ask of
    a limited run."""
    tmp = tmp_path_factory.mktemp("capacity")
    db_url = databases().new(tmp)
    try:
        with Sandbox(api_key=DEFAULT_API_KEY, processing_seconds=0.2,
                     rate_limit_rps=100 * LIMIT, rate_limit_burst=100 * BURST) as unlimited:
            cli = Cli(unlimited, db_url, tmp)
            write_prompts(cli.prompts, PROMPTS)
            start(cli, "unlimited")
            seen = traffic(unlimited)
    finally:
        databases().drop(db_url)
    assert seen.refused == 0, seen.summary()
    return seen.busy_rate()


@pytest.fixture
def limited(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(rate_limit_rps=LIMIT, rate_limit_burst=BURST)


@pytest.fixture
def cli(limited: Sandbox, db_url: str, tmp_path: Path) -> Cli:
    cli = Cli(limited, db_url, tmp_path)
    write_prompts(cli.prompts, PROMPTS)
    return cli


def start(cli: Cli, run_id: str, **env: str) -> dict[str, Any]:
    """Run `cftrunner start` to its end (with the default 6 attempts per request); its status."""
    result = cli.run(*cli.start_args(run_id),
                     env={"CFTRUNNER_CONCURRENCY": str(CONCURRENCY), **env}, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1].startswith(f"run {run_id}: LAUNCHED")
    return dict(shown_status(cli.env["CFTRUNNER_DB"], run_id))


def traffic(sandbox: Sandbox) -> Traffic:
    return Traffic(sandbox.admitted(), sandbox.counts()["rate_limited"])


def test_a_run_under_a_rate_limit_launches_keeping_close_to_the_allowed_rate(
        cli: Cli, limited: Sandbox, capacity: float) -> None:
    status = start(cli, "limited")

    assert status["failures"] == {}
    assert status["items"]["ADDED"] == len(PROMPTS)
    assert_exactly_once(limited, len(PROMPTS))
    seen = traffic(limited)
    print(f"\nunder a limit of {LIMIT:g}/s: {seen.summary()}; this host unlimited {capacity:.1f}/s")
    assert seen.busy_rate() >= 0.6 * min(LIMIT, capacity), seen.summary()
    assert seen.most_in_one_second() <= LIMIT + BURST, seen.summary()
    # Measured on 2 cores: ~155 requests let through and 3-8 refused (one halving per episode:
    # the start, then about every 10 s), 15.6-18.7 a second while busy, 9-12 s. With no shared
    # limiter, each request backing off alone, one is refused 6 times and the run stops. A
    # quarter of the requests let through (~38) leaves a fivefold margin.
    assert seen.refused <= len(seen.admitted) // 4, seen.summary()


def test_a_run_with_max_rps_below_the_limit_is_not_refused(
        cli: Cli, limited: Sandbox, capacity: float) -> None:
    ceiling = 0.75 * LIMIT
    status = start(cli, "below", CFTRUNNER_MAX_RPS=str(ceiling))

    assert status["failures"] == {}
    assert_exactly_once(limited, len(PROMPTS))
    seen = traffic(limited)
    # Measured: none refused, 15.1 a second, ~11 s. Even pacing leaves a quarter of each
    # request's slot to spare, and the burst covers requests a busy host delays and sends together.
    print(f"\nat most {ceiling:g}/s: {seen.summary()}; this host unlimited {capacity:.1f}/s")
    assert seen.refused <= 1, seen.summary()
    assert 0.8 * min(ceiling, capacity) <= seen.busy_rate() <= 1.05 * ceiling, seen.summary()


def test_the_sandbox_command_limits_requests_per_second() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cftrunner", "sandbox", "--port", "0", "--max-rps", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        assert requests.get(f"{url}/_sandbox/rate-limit", timeout=5).json() == {
            "rps": 0.5, "burst": 1}
        project = f"{url}/api/v1/public/projects/{DEFAULT_PROJECT_ID}"
        answers = [requests.get(project, headers={"Authorization": "Bearer any"}, timeout=5)
                   for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 429]
        assert 0 < float(answers[1].headers["Retry-After"]) <= 2
        assert requests.get(f"{url}/_sandbox/counts", timeout=5).json()["rate_limited"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
