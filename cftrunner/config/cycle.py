"""One cycle's settings (Cycle), and the judge, gate, loop and prompt rules its runs are created with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cftrunner.calibration import read_calibration
from cftrunner.config.run_options import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_TEMPERATURE,
    DEFAULT_TEMPLATE,
    GateConfig,
    JudgeConfig,
    LoopConfig,
)
from cftrunner.config.settings import (
    DEFAULT_FAILED_RETRY_INTERVAL,
    DEFAULT_INTERVAL,
    DEFAULT_SPLIT_PERCENTAGE,
    KEYS,
)
from cftrunner.exceptions import InputError
from cftrunner.judge import DEFAULT_JUDGE_MODEL, read_template
from cftrunner.prompt_source import Rules
from cftrunner.prompts import iter_prompts

CYCLE_KEYS = tuple(key for key in KEYS if key.target.startswith("cycle."))


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
    calibration: str | None = None  # an absolute path: the judge's calibration set
    gate_min_traces: int = 0
    gate_min_below_threshold: int = 0
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    gate_max_mean_score: float | None = None
    token_budget: int | None = None
    gate_max_judge_error: float | None = None
    follow: bool = False
    promote: bool = False
    holdout_prompts: str | None = None  # an absolute path
    promote_margin: float = 0.0
    regression: bool = False  # after a promotion, ask the earlier weak prompts again
    unload_losers: bool = False  # after the decision, unload the new models that lost
    notify_webhook_url: str | None = None  # where its runs' notifications are POSTed
    # Where a [[cycles]] entry's cycle was described ("FILE: [[cycles]] entry N (NAME)"), for messages.
    origin: str | None = field(default=None, compare=False)

    @property
    def title(self) -> str:
        """The cycle's name as tick prints it and --cycle takes it; "?" for a part not set."""
        return cycle_name(self.project_id or "?", self.model_alias or "?", self.name)

    def judge(self) -> JudgeConfig:
        """The judge a run of this cycle uses; the template file is read (and checked) here."""
        template = read_template(self.judge_prompt) if self.judge_prompt else DEFAULT_TEMPLATE
        if self.gate_max_judge_error is not None and not self.calibration:
            where = f"{self.origin}: " if self.origin else ""
            raise InputError(f"{where}gate.max_judge_error needs judge.calibration, the "
                             "calibration set the judge's error is measured on")
        return JudgeConfig(template=template, temperature=self.judge_temperature,
                           max_tokens=self.judge_max_tokens,
                           structured_output=self.structured_output,
                           template_source=self.judge_prompt,
                           calibration=read_calibration(self.calibration) if self.calibration
                           else (), calibration_source=self.calibration)

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
                          max_mean_score=self.gate_max_mean_score, token_budget=self.token_budget,
                          max_judge_error=self.gate_max_judge_error)


def cycle_from(values: Mapping[str, Any], name: str | None = None, origin: str | None = None) -> Cycle:
    """The cycle the per-cycle keys' checked `values` (by dotted name) describe."""
    return Cycle(name=name, origin=origin, **{key.target.removeprefix("cycle."): values[key.name]
                                              for key in CYCLE_KEYS})
