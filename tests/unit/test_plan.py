"""What `--dry-run` prints of a run it would start: pure, from the checks and the settings."""

from __future__ import annotations

from cftrunner.config.run_options import LoopConfig
from cftrunner.records import Checked
from cftrunner.views.plan import LastRun, lines

CHECKED = Checked("ds-1", ("model m is not among the 3 models",))


def plan(loop: LoopConfig = LoopConfig(), last: LastRun | None = None,  # noqa: B008 - frozen
         attempts: int = 3) -> list[str]:
    return lines(4, CHECKED, "https://api.example", "p-1", attempts, loop, last)


def test_the_plan_counts_the_requests_of_each_endpoint_and_warns_last() -> None:
    out = plan()
    assert out[0] == "checks: the key is accepted at https://api.example; project p-1 has dataset ds-1"
    assert out[1] == "items: 4"
    assert out[2].startswith("requests: chat completions 4 generations and 4 to 12 judgments; "
                             "traces 4; addToDataset 4; snapshots/create 1;")
    assert out[3] == "tokens: no earlier run of this cycle to go by"
    assert out[-1] == "warning: model m is not among the 3 models"
    assert "4 generations and 4 judgments;" in plan(attempts=1)[2]


def test_the_plan_says_what_follows_the_launch() -> None:
    promoting = plan(LoopConfig(follow=True, promote=True, holdout=("a", "b", "c")))
    assert promoting[3] == ("held-out evaluation: 3 prompts, each answered and judged by the "
                            "current model and by each new model (6 chat completions a model), "
                            "after the job trains")
    assert plan(LoopConfig(follow=True))[3] == "after the launch: the job is followed until it trains"
    assert not any(line.startswith(("held-out", "after the launch")) for line in plan())


def test_the_plan_goes_by_the_tokens_the_cycle_s_last_run_used_per_item() -> None:
    out = plan(last=LastRun("r-9", items=10, tokens=12_345))
    assert out[3] == ("tokens: the cycle's last run r-9 used 1,234 per item; 4 items at that "
                      "rate: about 4,938")
