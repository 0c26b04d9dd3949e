"""The state database's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

A change here comes with a revision in `store/migrations/versions/`; a test checks they agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def varchar(length: int) -> sa.types.TypeEngine[str]:
    """VARCHAR(length) on SQLite, which never enforces the length; TEXT on PostgreSQL, which would,
    so that both databases accept the same values (migration 0002)."""
    return sa.String(length).with_variant(sa.Text(), "postgresql")


metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", varchar(200), primary_key=True),
    sa.Column("project_id", varchar(200), nullable=False),
    sa.Column("model_alias", varchar(500), nullable=False),
    sa.Column("judge_model", varchar(500), nullable=False),
    sa.Column("split_percentage", sa.Integer, nullable=False),
    sa.Column("prompts_source", sa.Text, nullable=False),
    sa.Column("job_name", varchar(300), nullable=False, unique=True),
    sa.Column("state", varchar(32), nullable=False, index=True),
    sa.Column("dataset_id", varchar(200)),
    sa.Column("snapshot_id", varchar(200), unique=True),
    sa.Column("job_id", varchar(200), unique=True),
    sa.Column("experiments", sa.JSON),
    sa.Column("failure_reason", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("state_changed_at", UTCDateTime, nullable=False),
    # The configuration cycle the run belongs to (tick's unit), when it was started by one.
    sa.Column("cycle", varchar(300), index=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("lease_token", varchar(64)),
    sa.Column("lease_host", varchar(300)),
    sa.Column("lease_boot_id", varchar(64)),
    sa.Column("lease_pid", sa.Integer),
    sa.Column("lease_started", varchar(32)),
    sa.Column("lease_expires_at", UTCDateTime),
    # Fixed when the run is created, so a resume judges and gates as the start did: the judge
    # prompt template and its request settings, and the gate's conditions (judge.py, gate.py).
    sa.Column("judge_config", sa.JSON),
    sa.Column("gate_config", sa.JSON),
    # What the gate found before the snapshot: its figures, verdict and reasons.
    sa.Column("gate_result", sa.JSON),
    sa.Column("skip_reason", sa.Text),
    # After the launch (loop.py): whether to follow the job and promote its model, fixed when
    # the run is created; the job as last read; the promotion decision.
    sa.Column("loop_config", sa.JSON),
    sa.Column("training", sa.JSON),
    sa.Column("promotion", sa.JSON),
    # Where a cycle's run took its prompts from (prompt_source.Choice.summary): files, new and
    # reused counts, and how many unused prompts remained.
    sa.Column("prompt_source", sa.JSON),
    # The API the run was started on: its traces, dataset and job are there, so it goes on there.
    sa.Column("base_url", sa.Text),
    # What the judge's calibration set found: its mean absolute error and bias (calibration.py).
    sa.Column("calibration", sa.JSON),
)

# Every prompt a cycle's runs took, by digest, so the next run of the cycle takes only new ones.
# No foreign key: it outlives the runs that used the prompts, should they be deleted.
prompt_uses = sa.Table(
    "prompt_uses",
    metadata,
    sa.Column("cycle", varchar(300), primary_key=True),
    sa.Column("digest", varchar(32), primary_key=True),
    sa.Column("run_id", varchar(200), nullable=False),  # the last run that took it, and where
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("tag", sa.Text),
    sa.Column("used_at", UTCDateTime, nullable=False),
)

# One row per configuration cycle, locked while tick decides whether to start a run for it.
cycles = sa.Table(
    "cycles",
    metadata,
    sa.Column("name", varchar(300), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", varchar(200), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("stage", varchar(32), nullable=False),
    sa.Column("answer", sa.Text),
    sa.Column("feedback", sa.Text),
    sa.Column("reasoning", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("judge_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("judge_raw", sa.Text),
    # One remote trace never belongs to two items: reconciliation relies on it.
    sa.Column("trace_id", varchar(200), unique=True),
    sa.Column("add_status", varchar(32)),
    sa.Column("datapoint_id", varchar(200)),
    sa.Column("processing_status", varchar(32)),
    sa.Column("error_kind", varchar(64)),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The worker whose item it is while unfinished (ownership.py); a lapsed worker's token frees it.
    sa.Column("claim_token", varchar(64)),
    sa.UniqueConstraint("run_id", "position"),
    sa.Index("ix_items_run_stage", "run_id", "stage"),
)

# The processes working on a run's items, each until its expiry unless it renews it (ownership.py).
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("token", varchar(64), primary_key=True),
    sa.Column("run_id", varchar(200), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("host", varchar(300), nullable=False),
    sa.Column("boot_id", varchar(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started", varchar(32), nullable=False),
    sa.Column("joined_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# Every chat completion an item's steps received (or were refused): the audit trail of the
# judge, and the token count of the run. A judge row holds the exact request and answer.
completions = sa.Table(
    "completions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", varchar(200), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False, index=True),
    sa.Column("kind", varchar(16), nullable=False),  # "generate" | "judge"
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("request", sa.JSON),
    sa.Column("content", sa.Text),
    sa.Column("finish_reason", varchar(32)),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("total_tokens", sa.Integer),
    sa.Column("outcome", varchar(32), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("at", UTCDateTime, nullable=False),
)

# Held-out prompts answered and judged to compare the new models with the current one.
evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", varchar(200), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("model_id", varchar(500), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("answer", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("judge_raw", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("tokens", sa.Integer),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("run_id", "model_id", "position"),
)

# After a promotion: the cycle's earlier weak prompts asked again of the promoted model, chosen
# once (answer and `at` empty until asked), each kept as it is judged; never traced nor added.
rechecks = sa.Table(
    "rechecks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", varchar(200), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("digest", varchar(32), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("earlier_run_id", varchar(200), nullable=False),
    sa.Column("earlier_score", sa.Float, nullable=False),
    sa.Column("model_id", varchar(500), nullable=False),
    sa.Column("answer", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("judge_raw", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("tokens", sa.Integer),
    sa.Column("at", UTCDateTime),
    sa.UniqueConstraint("run_id", "position"),
)

# The run's judge on each answer of its calibration set, kept as it comes (a resume judges
# only those not kept): the score, or why there is none.
calibrations = sa.Table(
    "calibrations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", varchar(200), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("expected", sa.Float, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("judge_raw", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("tokens", sa.Integer),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("run_id", "position"),
)

effects = sa.Table(
    "effects",
    metadata,
    sa.Column("run_id", varchar(200), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("key", varchar(100), primary_key=True),
    sa.Column("kind", varchar(32), nullable=False),
    # Indexed: deleting an item (prune) looks up the effects that name it (migration 0008).
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), index=True),
    sa.Column("status", varchar(16), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("prepared_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("outcome", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", varchar(200), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("item_id", sa.Integer),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", varchar(64), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)

# A notification per run and event (a run state, or KEY_REJECTED), kept so that each is sent once
# and retried until delivered or given up (service/notify.py). `subject` is the run's id, or
# "cycle NAME after RUN" for a key refused before a run existed. No foreign key: what was said
# of a run outlives it, should it be pruned.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("subject", varchar(600), primary_key=True),
    sa.Column("event", varchar(32), primary_key=True),
    sa.Column("run_id", varchar(200)),
    sa.Column("cycle", varchar(300)),
    sa.Column("url", sa.Text),  # None: no webhook was set for the cycle when it happened
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", varchar(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("next_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.Index("ix_deliveries_status_next_at", "status", "next_at"),
)
