"""Answers the SDK allows, through the command line: older recommendations and chat answers with
no content never stop a run; each is recorded where `status` and the store show it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from cftrunner.sandbox import DEFAULT_PROJECT_ID, FaultRule, Sandbox
from cftrunner.store import Store
from tests.conftest import PROMPTS, Cli

pytestmark = pytest.mark.slow


def _converted(db_url: str, run_id: str) -> list[dict[str, object]]:
    store = Store(db_url)
    try:
        return [e.data for e in store.events(run_id) if e.kind == "experiments_converted"]
    finally:
        store.close()


def test_start_launches_older_recommendations_with_a_training_type(
        cli: Cli, sandbox: Sandbox, db_url: str) -> None:
    sandbox.add_fault(FaultRule(route="recs_get", kind="lora_flag"))
    result = cli.run(*cli.start_args("older"))
    assert result.returncode == 0, result.stderr
    [job] = sandbox.world.jobs()
    sent = sandbox.world.sent_experiments(job["id"])
    assert sent and all(e["training_type"] in ("lora", "full") and "lora" not in e for e in sent)
    [event] = _converted(db_url, "older")
    assert [(e["base_model_id"], e["training_type"]) for e in event["experiments"]] == [  # type: ignore[union-attr, index]
        (e["base_model_id"], e["training_type"]) for e in sent]


def test_a_run_stored_with_older_recommendations_resumes_with_a_training_type(
        cli: Cli, sandbox: Sandbox, db_url: str) -> None:
    """A run that stored its recommendations before they were converted (an earlier cftrunner)."""
    crashed = cli.run(*cli.start_args("stored"), env={"CFTRUNNER_CRASH_AT": "recs.after_ready"})
    assert crashed.returncode == -9, crashed.stderr
    store = Store(db_url)
    try:
        run = store.run("stored")
        older = [{**{k: v for k, v in e.items() if k != "training_type"},
                  "lora": e["training_type"] != "full"} for e in run.experiments or []]
        with store.tx() as tx:
            tx.update_run("stored", run.state, experiments=older)
    finally:
        store.close()
    resumed = cli.run("resume", "stored")
    assert resumed.returncode == 0, resumed.stderr
    [job] = sandbox.world.jobs()
    sent = sandbox.world.sent_experiments(job["id"])
    assert [(e["base_model_id"], e["training_type"]) for e in sent] == [
        (e["base_model_id"], "lora" if e["lora"] else "full") for e in older]
    assert len(_converted(db_url, "stored")) == 1


def test_answers_with_no_content_fail_their_items_and_the_run_launches(
        cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="no_content", judge=False, match="message 1"))
    sandbox.add_fault(FaultRule(route="chat", kind="no_content", judge=True, match="message 2"))
    result = cli.run(*cli.start_args("empty"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("run empty: LAUNCHED job ")
    status = json.loads(cli.run("status", "empty", "--json").stdout)
    assert status["items"]["GEN_FAILED"] == 1 and status["items"]["JUDGE_FAILED"] == 1
    assert status["items"]["ADDED"] == len(PROMPTS) - 2
    shown = cli.run("show", "empty", "1")
    assert shown.returncode == 0, shown.stderr
    assert "no content (finish_reason: content_filter)" in shown.stdout
    assert sandbox.counts()["chat"]["judge"] == len(PROMPTS) - 1 + 2  # item 2: three attempts


def test_the_sandbox_command_takes_the_older_recommendations_fault(cli: Cli) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cftrunner", "sandbox", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        added = requests.post(f"{url}/_sandbox/faults", timeout=5,
                              json={"kind": "lora_flag", "route": "recs_get"})
        assert added.status_code == 200, added.text
        env = {**cli.env, "CFTRUNNER_BASE_URL": url}
        result = cli.run(*cli.start_args("served"), env=env)
        assert result.returncode == 0, result.stderr
        counts = requests.get(f"{url}/_sandbox/counts", timeout=5).json()
        assert counts["jobs"] == 1 and counts["faults_fired"] == {"lora_flag": 2}
        tree = requests.get(f"{url}/api/v1/public/projects/{DEFAULT_PROJECT_ID}", timeout=5,
                            headers={"Authorization": "Bearer any"}).json()
        [experiments] = [j["children"] for s in tree["project"]["children"][0]["children"]
                         for j in s["children"]]
        assert experiments and all(e["metadata"]["base_model_id"] for e in experiments)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
