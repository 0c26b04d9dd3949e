"""Frozen records: runs, items, effects and events as the store returns them, and a new run's spec."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cftrunner.config.run_options import GateConfig, JudgeConfig, LoopConfig
from cftrunner.states import ITEM_FAILED, TERMINAL, ItemStage, RunState


class EffectStatus(enum.StrEnum):
    PREPARED = "PREPARED"  # the intent is stored; the request may have been sent, outcome unknown
    UNSENT = "UNSENT"  # the last attempt surely never reached the server; safe to send again
    DONE = "DONE"  # the outcome is stored
    FAILED = "FAILED"  # the server rejected the request for good
    # Whether it happened could not be told within timeouts.reconcile_give_up: never sent again
    # on our own; a person decides with `cftrunner settle` (still looked for meanwhile).
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Owner:
    """A process that may hold a run's lease: the pid alone is ambiguous once pids are reused."""

    host: str
    boot_id: str
    pid: int
    started: str

    def label(self) -> str:
        return f"{self.host} pid {self.pid}"


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as stored on the run."""

    token: str
    owner: Owner
    expires_at: datetime


class Holder(Protocol):
    """Whoever holds a run's lease or a worker's claims, as the store writes and fences it."""

    @property
    def run_id(self) -> str: ...

    @property
    def owner(self) -> Owner: ...

    @property
    def token(self) -> str: ...

    @property
    def seconds(self) -> float: ...


@dataclass(frozen=True)
class Run:
    id: str
    project_id: str
    model_alias: str
    judge_model: str
    split_percentage: int
    prompts_source: str
    job_name: str
    state: RunState
    created_at: datetime
    updated_at: datetime
    state_changed_at: datetime
    dataset_id: str | None = None
    snapshot_id: str | None = None
    job_id: str | None = None
    experiments: list[dict[str, Any]] | None = None
    failure_reason: str | None = None
    last_error: str | None = None
    cycle: str | None = None
    cancel_requested: bool = False
    lease: LeaseInfo | None = None
    judge_config: dict[str, Any] | None = None  # config.run_options.JudgeConfig as stored; None before 0004
    gate_config: dict[str, Any] | None = None  # config.run_options.GateConfig as stored; None: no gate
    gate_result: dict[str, Any] | None = None  # what the gate found, once it has looked
    skip_reason: str | None = None
    loop_config: dict[str, Any] | None = None  # config.run_options.LoopConfig as stored; None: neither
    training: dict[str, Any] | None = None  # the job and its experiments as last read
    promotion: dict[str, Any] | None = None  # the promotion decision, its scores and reason
    prompt_source: dict[str, Any] | None = None  # where a cycle's run took its prompts from
    base_url: str | None = None  # the API it was started on; None for a run stored before 0005
    calibration: dict[str, Any] | None = None  # what its calibration set found (calibration.py)

    # The stored configs, read once per record: a run's items are worked on with one record.
    @functools.cached_property
    def judge(self) -> JudgeConfig:
        return JudgeConfig.from_json(self.judge_config)

    @functools.cached_property
    def gate(self) -> GateConfig:
        return GateConfig.from_json(self.gate_config)

    @functools.cached_property
    def loop(self) -> LoopConfig:
        return LoopConfig.from_json(self.loop_config)

    @property
    def finished(self) -> bool:
        """Nothing more to do: a terminal state, or LAUNCHED (TRAINED) when the run does not
        follow its job (promote its model)."""
        if self.state in TERMINAL:
            return True
        if self.state is RunState.LAUNCHED:
            return not self.loop.follow
        if self.state is RunState.TRAINED:
            return not self.loop.promote
        return False


@dataclass(frozen=True)
class Item:
    id: int
    run_id: str
    position: int
    prompt: str
    stage: ItemStage
    updated_at: datetime
    answer: str | None = None
    feedback: str | None = None
    reasoning: str | None = None
    score: float | None = None
    judge_attempts: int = 0
    judge_raw: str | None = None
    trace_id: str | None = None
    add_status: str | None = None
    datapoint_id: str | None = None
    processing_status: str | None = None
    error_kind: str | None = None
    error: str | None = None
    claim_token: str | None = None  # the worker whose item it is (see ownership.py)

    @property
    def failed(self) -> bool:
        return self.stage in ITEM_FAILED


@dataclass(frozen=True)
class Completion:
    """One chat completion of an item's step, as received (or refused), with its token count."""

    id: int
    run_id: str
    item_id: int
    kind: str  # "generate" | "judge"
    attempt: int
    outcome: str  # "ok", or why the answer was not used: "malformed", "truncated", "rejected",
    #   "no_content" (a generation answered with null content)
    at: datetime
    request: dict[str, Any] | None = None
    content: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Effect:
    run_id: str
    key: str
    kind: str
    status: EffectStatus
    request: dict[str, Any]
    prepared_at: datetime
    attempts: int
    updated_at: datetime
    item_id: int | None = None
    outcome: dict[str, Any] | None = None
    error: str | None = None

    @property
    def settled(self) -> dict[str, Any] | None:
        """The outcome a person gave (`cftrunner settle --happened`) to an effect whose outcome
        was unknown, not yet applied."""
        if self.status in (EffectStatus.PREPARED, EffectStatus.UNKNOWN) and self.outcome \
                and self.outcome.get("settled"):
            return {k: v for k, v in self.outcome.items() if k != "settled"}
        return None


@dataclass(frozen=True)
class Event:
    id: int
    run_id: str
    at: datetime
    kind: str
    item_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerInfo:
    """A process registered to work on a run's items, and the unfinished items it holds."""

    owner: Owner
    expires_at: datetime
    holding: int


@dataclass(frozen=True)
class RunSummary:
    """A run with its items counted per stage, as `status` shows it."""

    run: Run
    stage_counts: dict[str, int]
    failures: dict[str, int]
    state_seconds: dict[str, float] = field(default_factory=dict)
    workers: list[WorkerInfo] = field(default_factory=list)
    # Effects whose outcome could not be told in time: they wait for `cftrunner settle`.
    undecided: list[Effect] = field(default_factory=list)
    # After a promotion with `regression`: the cycle's weak prompts asked again of the new model.
    rechecks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_items(self) -> int:
        return sum(self.stage_counts.values())


@dataclass(frozen=True)
class RunSpec:
    project_id: str
    model_alias: str
    prompts_source: str
    judge_model: str
    split_percentage: int = 80
    run_id: str | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


@dataclass(frozen=True)
class Checked:
    """What the checks found: the project's dataset, and what is worth a warning."""

    dataset_id: str
    warnings: tuple[str, ...] = ()
